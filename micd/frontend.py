"""The frontend seam: the one declaration each protocol module exports so the composition root can mount it.

A `Frontend` names a tool and says what it brings: an HTTP sub-application under its own URL prefix, gRPC
services, the KV namespaces it owns, and how to render its clients' configuration (files written into the
state dir and environment variables) from the daemon's endpoints and token. `micd/app.py` keeps one tuple of
frontends and does everything else from it: mounts each part, hands each a store view labelled with its tool
name and limited to its namespaces, and `check_frontends` refuses at start-up any two that would collide.

Ownership rules: a prefix `/a` owns every path `/a` and `/a/…`; a namespace `a` owns `a` and `a/…`. Two
frontends overlap when one's prefix (namespace) owns the other's. `/healthz`, `/metrics` and `/stats` belong
to the daemon.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from aiohttp import web

    from micd.store import Store

__all__ = [
    "DAEMON_PATHS",
    "ClientConfig",
    "ClientContext",
    "Frontend",
    "GrpcPart",
    "check_client_config",
    "check_frontends",
    "check_services",
    "owns",
]

DAEMON_PATHS = ("/healthz", "/metrics", "/stats")
"""Paths the daemon serves itself; no frontend prefix may own them."""
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


@dataclass(frozen=True)
class ClientContext:
    """What a frontend renders its client configuration from."""

    url: str
    """This frontend's own HTTP base URL: the daemon's HTTP URL plus the frontend's prefix."""
    http_url: str
    """http://127.0.0.1:<port>, no trailing slash."""
    grpc_url: str
    """grpc://127.0.0.1:<port>."""
    token: str
    state_dir: Path
    settings: Mapping[str, Any]
    """This tool's `[tools.<name>]` settings (e.g. Bazel's `instance_name`)."""


@dataclass(frozen=True)
class ClientConfig:
    """A tool's client configuration: files the daemon writes into its state dir (mode 0600: they may carry
    the token) and environment variables activation exports."""

    files: Mapping[str, str] = field(default_factory=dict)
    """File name (no directory) → content."""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GrpcPart:
    """A frontend's gRPC services, built for one store, and what to run once the server has stopped."""

    handlers: Sequence[grpc.ServiceRpcHandler]
    close: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Frontend:
    """One tool's declaration. `http` and `prefix` come together; every part is optional but the name."""

    name: str
    """Tool name: the metrics label, the `[tools.<name>]` config section."""
    prefix: str | None = None
    """URL prefix of the HTTP sub-application, e.g. `/bazel` (OCI: `/v2`, where clients require it)."""
    namespaces: tuple[str, ...] = ()
    """KV namespaces this tool owns; its store view refuses any other."""
    http: Callable[[Store], web.Application] | None = None
    """Builds the sub-application (its `on_cleanup` is its clean-up)."""
    grpc: Callable[[Store], GrpcPart] | None = None
    client: Callable[[ClientContext], ClientConfig] | None = None


def owns(owner: str, name: str, *, sep: str = "/") -> bool:
    """True if `owner` (a prefix or namespace) owns `name`: equal, or `name` continues it after `sep`."""
    return name == owner or name.startswith(owner + sep)


def _pairs(items: Iterable[tuple[str, str]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    listed = list(items)
    return [(a, b) for i, a in enumerate(listed) for b in listed[i + 1 :]]


def check_frontends(frontends: Sequence[Frontend]) -> None:
    """Refuse (ValueError) malformed declarations and any two frontends whose names, prefixes or namespaces
    overlap, so a new protocol can never shadow another's routes or records."""
    names = [f.name for f in frontends]
    for frontend in frontends:
        if not _NAME.fullmatch(frontend.name):
            raise ValueError(f"frontend name {frontend.name!r} must match {_NAME.pattern}")
        if (frontend.prefix is None) != (frontend.http is None):
            raise ValueError(f"frontend {frontend.name}: an HTTP app needs a prefix and a prefix an app")
        if frontend.prefix is not None and not _PREFIX.fullmatch(frontend.prefix):
            raise ValueError(f"frontend {frontend.name}: prefix {frontend.prefix!r} must look like /a or /a/b")
        for namespace in frontend.namespaces:
            if not _NAMESPACE.fullmatch(namespace):
                raise ValueError(f"frontend {frontend.name}: namespace {namespace!r} is malformed")
        for path in DAEMON_PATHS:
            if frontend.prefix is not None and (owns(frontend.prefix, path) or owns(path, frontend.prefix)):
                raise ValueError(f"frontend {frontend.name}: prefix {frontend.prefix} overlaps the daemon's {path}")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"frontend names declared twice: {sorted(duplicates)}")
    prefixes = [(f.name, f.prefix) for f in frontends if f.prefix is not None]
    for (a, pa), (b, pb) in _pairs(prefixes):
        if owns(pa, pb) or owns(pb, pa):
            raise ValueError(f"frontends {a} and {b} have overlapping URL prefixes {pa} and {pb}")
    namespaces = [(f.name, ns) for f in frontends for ns in f.namespaces]
    for (a, na), (b, nb) in _pairs(namespaces):
        if owns(na, nb) or owns(nb, na):
            raise ValueError(f"frontends {a} and {b} have overlapping KV namespaces {na} and {nb}")


def check_services(parts: Mapping[str, GrpcPart]) -> None:
    """Refuse two frontends (or one twice) registering the same gRPC service name."""
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for handler in part.handlers:
            service = handler.service_name()
            if service in seen:
                raise ValueError(f"frontends {seen[service]} and {name} both serve gRPC service {service}")
            seen[service] = name


def check_client_config(name: str, config: ClientConfig) -> None:
    """Refuse file names that could leave the state dir and environment names a shell cannot export."""
    for file_name in config.files:
        if "/" in file_name or file_name in ("", ".", "..") or file_name.startswith("."):
            raise ValueError(f"frontend {name}: client file name {file_name!r} must be a plain file name")
    for env_name in config.env:
        if not _ENV_NAME.fullmatch(env_name):
            raise ValueError(f"frontend {name}: environment variable name {env_name!r} is malformed")
