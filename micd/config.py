"""The one configuration of mic and micd: typed keys, one loader, one `validate()`.

Precedence, highest first: CLI flags > `MIC_*` environment variables > the workspace's `mic.toml`, then its
`.mic/config.toml` (written by `mic init`/`mic checkout`) > user config `$XDG_CONFIG_HOME/mic/config.toml` >
defaults. Every effective value remembers where it came from, so `mic config show` and validation errors can
name the source.

The workspace is the nearest directory at or above the working directory that holds `mic.toml` or `.mic/`
(with neither anywhere, the working directory). It is a VCS checkout (`workspace_root`) when it holds `.mic/`.

TOML layout (all keys optional)::

    [store]  dir, memory_budget, disk_soft_cap, disk_hard_cap   # sizes: 1073741824, "512MiB", "10GiB"
    [s3]     bucket, prefix, endpoint_url, region               # S3 is off when no bucket is set
    [daemon] state_dir, session, idle_timeout, drain_timeout, log_level   # durations: 600, "30s", "10m", "2h"
    [vcs]    store_url, s3_endpoint_url, watch, watch_min_files, watch_idle_timeout, debug_kill_at
    [tools.bazel] instance_name                                 # written into the generated bazelrc

`vcs.store_url` is the VCS object store (`file:///dir` or `s3://bucket/prefix`); `vcs.watch` ("on"/"off")
with `watch_min_files` and `watch_idle_timeout` control the file watcher; `MIC_DEBUG_KILL_AT` is a test hook
(the lander SIGKILLs itself at the named step). `MIC_S3_ENDPOINT_URL` sets both `s3.endpoint_url` and
`vcs.s3_endpoint_url`.

The session (and so the state dir) is, in order: `daemon.session` from any layer, the mic session active in
the workspace (`.mic/state.json`), else a stable id derived from the workspace path (one per workspace).

This is the only module that reads `os.environ`; everything else receives values as explicit arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mickernel.errors import ConfigError
from mickernel.units import parse_byte_size, parse_duration

__all__ = [
    "DAEMON_KEYS",
    "KEYS",
    "Config",
    "Key",
    "find_workspace",
    "load_config",
]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _parse_switch(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    raise ValueError(f"expected on or off, got {value!r}")


def _parse_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"expected a whole number ≥ 0, got {value!r}")


def _parse_level(value: object) -> str:
    level = _parse_str(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


@dataclass(frozen=True)
class Key:
    """One configuration key: TOML name, dataclass attribute, env var, CLI flag and parser."""

    name: str
    attr: str
    env: str
    parse: Callable[[object], Any]
    help: str
    is_path: bool = False
    cli_flag: str = ""

    @property
    def flag(self) -> str:
        """The command-line option: `cli_flag` if set, else from the attribute, e.g. `--memory-budget`."""
        return self.cli_flag or "--" + self.attr.replace("_", "-")


KEYS: tuple[Key, ...] = (
    Key("store.dir", "cache_dir", "MIC_CACHE_DIR", _parse_str, "shared disk cache root", is_path=True),
    Key("store.memory_budget", "memory_budget", "MIC_MEMORY_BUDGET", parse_byte_size, "memory tier size"),
    Key(
        "store.disk_soft_cap",
        "disk_soft_cap",
        "MIC_DISK_SOFT_CAP",
        parse_byte_size,
        "disk size that starts eviction",
    ),
    Key(
        "store.disk_hard_cap",
        "disk_hard_cap",
        "MIC_DISK_HARD_CAP",
        parse_byte_size,
        "disk size that rejects writes",
    ),
    Key("s3.bucket", "s3_bucket", "MIC_S3_BUCKET", _parse_str, "S3 bucket (S3 tier off when unset)"),
    Key("s3.prefix", "s3_prefix", "MIC_S3_PREFIX", _parse_str, "key prefix inside the bucket"),
    Key(
        "s3.endpoint_url", "s3_endpoint_url", "MIC_S3_ENDPOINT_URL", _parse_str, "S3-compatible endpoint URL"
    ),
    Key("s3.region", "s3_region", "MIC_S3_REGION", _parse_str, "S3 region"),
    Key(
        "daemon.state_dir", "state_dir", "MIC_STATE_DIR", _parse_str, "this daemon's state dir", is_path=True
    ),
    Key("daemon.session", "session", "MIC_SESSION", _parse_str, "session id (default: one per workspace)"),
    Key(
        "daemon.idle_timeout",
        "idle_timeout",
        "MIC_IDLE_TIMEOUT",
        parse_duration,
        "stop after idle (0 = never)",
    ),
    Key(
        "daemon.drain_timeout", "drain_timeout", "MIC_DRAIN_TIMEOUT", parse_duration, "S3 drain bound at stop"
    ),
    Key("daemon.log_level", "log_level", "MIC_LOG_LEVEL", _parse_level, "daemon log level"),
    Key(
        "vcs.store_url",
        "store_url",
        "MIC_STORE_URL",
        _parse_str,
        "VCS object store: file:///dir or s3://bucket/prefix",
        cli_flag="--store",
    ),
    Key(
        "vcs.s3_endpoint_url",
        "vcs_s3_endpoint_url",
        "MIC_S3_ENDPOINT_URL",
        _parse_str,
        "S3-compatible endpoint URL of the VCS store",
        cli_flag="--s3-endpoint-url",
    ),
    Key("vcs.watch", "watch", "MIC_WATCH", _parse_switch, "file watcher for large workspaces: on or off"),
    Key(
        "vcs.watch_min_files",
        "watch_min_files",
        "MIC_WATCH_MIN_FILES",
        _parse_count,
        "start a watcher only for workspaces with this many files",
    ),
    Key(
        "vcs.watch_idle_timeout",
        "watch_idle_timeout",
        "MIC_WATCH_IDLE_TIMEOUT",
        parse_duration,
        "a watcher exits after this long without a request",
    ),
    Key(
        "vcs.debug_kill_at",
        "debug_kill_at",
        "MIC_DEBUG_KILL_AT",
        _parse_str,
        "test hook: the lander kills itself at this step",
    ),
    Key(
        "tools.bazel.instance_name",
        "bazel_instance_name",
        "MIC_BAZEL_INSTANCE_NAME",
        _parse_str,
        "REAPI instance name written into the bazelrc",
    ),
)
DAEMON_KEYS = tuple(key for key in KEYS if not key.name.startswith("vcs."))
"""The keys the daemon uses: `mic daemon …`, `mic stats`, `mic config show` and `micd` take them as flags."""
_BY_NAME = {key.name: key for key in KEYS}
_BY_ATTR = {key.attr: key for key in KEYS}
_SECTIONS = {"store", "s3", "daemon", "vcs", "tools"}
_S3_URL = re.compile(r"s3://[^/\s]+(/.*)?")
_HTTP_URL = re.compile(r"https?://[^/\s]+")


@dataclass(frozen=True)
class Config:
    """Effective configuration of both halves. `sources[attr]` says where each value came from.

    `workspace_root` is the workspace when it is a VCS checkout (holds `.mic/`), else None.
    """

    cache_dir: Path
    memory_budget: int
    disk_soft_cap: int
    disk_hard_cap: int
    s3_bucket: str | None
    s3_prefix: str
    s3_endpoint_url: str | None
    s3_region: str | None
    state_dir: Path
    session: str
    idle_timeout: float
    drain_timeout: float
    log_level: str
    store_url: str
    vcs_s3_endpoint_url: str | None
    watch: bool
    watch_min_files: int
    watch_idle_timeout: float
    debug_kill_at: str | None
    bazel_instance_name: str
    workspace: Path
    workspace_root: Path | None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def s3_enabled(self) -> bool:
        """S3 is on exactly when a bucket is configured."""
        return bool(self.s3_bucket)

    def tool_settings(self, tool: str) -> dict[str, Any]:
        """The `[tools.<tool>]` values by their name in that table, e.g. {"instance_name": ""} for bazel."""
        prefix = f"tools.{tool}."
        return {key.name[len(prefix) :]: getattr(self, key.attr) for key in KEYS if key.name.startswith(prefix)}

    def source(self, attr: str) -> str:
        """Where the value of `attr` came from ("default", "env MIC_…", a file, "flag --…")."""
        return self.sources.get(attr, "default")

    def validate(self) -> Config:
        """Check values and cross-key invariants; raise ConfigError naming the keys and their sources."""

        def where(attr: str) -> str:
            return f"{_BY_ATTR[attr].name} (from {self.source(attr)})"

        if self.disk_hard_cap < self.disk_soft_cap:
            raise ConfigError(
                f"{where('disk_hard_cap')} = {self.disk_hard_cap} is below "
                f"{where('disk_soft_cap')} = {self.disk_soft_cap}"
            )
        if self.disk_soft_cap == 0:
            raise ConfigError(f"{where('disk_soft_cap')} must be > 0 (the disk tier is always on)")
        for attr in ("s3_endpoint_url", "vcs_s3_endpoint_url"):
            url = getattr(self, attr)
            if url and not _HTTP_URL.match(url):
                raise ConfigError(f"{where(attr)} must be an http:// or https:// URL, got {url!r}")
        if self.s3_bucket is not None and not re.fullmatch(
            r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.s3_bucket
        ):
            raise ConfigError(f"{where('s3_bucket')} is not a valid bucket name: {self.s3_bucket!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", self.session):
            raise ConfigError(f"{where('session')} must be letters, digits, '_', '.', '-': {self.session!r}")
        self._validate_vcs(where)
        if not re.fullmatch(r"([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?", self.bazel_instance_name):
            raise ConfigError(
                f"{where('bazel_instance_name')} must be '/'-separated letters, digits, '_', '.', '-': "
                f"{self.bazel_instance_name!r}"
            )
        return self

    def _validate_vcs(self, where: Callable[[str], str]) -> None:
        """The VCS keys: a usable store URL and a finite, positive watcher idle timeout."""
        url = self.store_url
        if not url.startswith(("file://", "s3://")):
            raise ConfigError(f"{where('store_url')} = {url!r} must start with file:// or s3://")
        if url.startswith("s3://") and not _S3_URL.fullmatch(url):
            raise ConfigError(
                f"{where('store_url')} = {url!r} names no bucket: use s3://BUCKET/optional/prefix"
            )
        if url.startswith("file://") and not url.startswith(("file:///", "file://localhost/")):
            raise ConfigError(f"{where('store_url')} = {url!r} must be an absolute file:///path")
        if not 0 < self.watch_idle_timeout < float("inf"):
            raise ConfigError(f"{where('watch_idle_timeout')} must be a positive number of seconds")

    def effective(self) -> list[tuple[str, object, str]]:
        """(key name, value, source) for every key, in table order: what `mic config show` prints."""
        rows: list[tuple[str, object, str]] = []
        for key in KEYS:
            value = getattr(self, key.attr)
            rows.append((key.name, str(value) if isinstance(value, Path) else value, self.source(key.attr)))
        rows.append(("workspace", str(self.workspace), self.source("workspace")))
        return rows


def find_workspace(cwd: Path) -> Path:
    """Return the nearest directory at or above `cwd` holding `mic.toml` or `.mic/`; with neither, `cwd`."""
    for directory in (cwd, *cwd.parents):
        if (directory / "mic.toml").is_file() or (directory / ".mic").is_dir():
            return directory
    return cwd


def _active_session(workspace: Path) -> tuple[str | None, str]:
    """Return the mic session active in this workspace (`.mic/state.json`) and its source, or (None, "")."""
    state = workspace / ".mic" / "state.json"
    try:
        session = json.loads(state.read_text()).get("session")
    except (OSError, ValueError, AttributeError):
        return None, ""
    return (session, f"active session in {state}") if isinstance(session, str) and session else (None, "")


def _flatten(table: dict[str, Any], prefix: str, path: Path) -> dict[str, tuple[object, str]]:
    """{dotted key name: (value, source)} for every value under `table`; subtables ([tools.bazel]) recurse."""
    found: dict[str, tuple[object, str]] = {}
    for name, value in table.items():
        full = f"{prefix}.{name}"
        if isinstance(value, dict):
            found.update(_flatten(value, full, path))
        elif full in _BY_NAME:
            found[full] = (value, str(path))
        else:
            raise ConfigError(f"{path}: unknown key {full} (known: {', '.join(sorted(_BY_NAME))})")
    return found


def _read_toml(path: Path) -> dict[str, tuple[object, str]]:
    """Flatten the known sections of a TOML file into {key name: (value, source)}; other tables are ignored."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML (UTF-8): {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    found: dict[str, tuple[object, str]] = {}
    for section in sorted(_SECTIONS & data.keys()):
        if not isinstance(data[section], dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        found.update(_flatten(data[section], section, path))
    return found


def _layers(
    flags: Mapping[str, object], env: Mapping[str, str], config_home: Path, workspace: Path
) -> list[dict[str, tuple[object, str]]]:
    """Every layer as {key name: (raw value, source)}, lowest precedence first."""
    files = (config_home / "mic" / "config.toml", workspace / ".mic" / "config.toml", workspace / "mic.toml")
    layers = [_read_toml(path) for path in files if path.is_file()]
    layers.append({k.name: (env[k.env], f"env {k.env}") for k in KEYS if env.get(k.env, "") != ""})
    layers.append(
        {_BY_ATTR[a].name: (v, f"flag {_BY_ATTR[a].flag}") for a, v in flags.items() if v is not None}
    )
    return layers


def load_config(
    flags: Mapping[str, object] | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective, validated Config.

    Args:
        flags: command-line values keyed by attribute (`memory_budget`); None values are ignored.
        cwd: where to start looking for the workspace (default: the process cwd).
        env: the environment (default: `os.environ`).

    Raises:
        ConfigError: a value does not parse or keys contradict each other; the message names key and source.

    """
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).resolve()
    home = Path(env.get("HOME") or Path.home())
    workspace = find_workspace(cwd)

    values: dict[str, object] = {}
    sources: dict[str, str] = {"workspace": "found from cwd" if workspace != cwd else "cwd"}
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    for layer in _layers(flags or {}, env, config_home, workspace):  # later layers overwrite
        for name, (raw, source) in layer.items():
            key = _BY_NAME[name]
            try:
                value = key.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} (from {source}): {exc}") from exc
            if key.is_path:
                base = Path(source).parent if source.endswith(".toml") else cwd
                value = (base / Path(str(value)).expanduser()).resolve()
            values[key.attr] = value
            sources[key.attr] = source

    session = values.get("session")
    if session is None:
        session, sources["session"] = _active_session(workspace)
    if session is None:
        session = "ws-" + hashlib.sha256(str(workspace).encode()).hexdigest()[:16]
        sources["session"] = f"derived from workspace {workspace}"
    merged = {**_defaults(env, home, str(session)), **values, "session": session}
    for attr in ("s3_bucket", "s3_endpoint_url", "s3_region", "vcs_s3_endpoint_url", "debug_kill_at"):
        merged[attr] = merged[attr] or None
    workspace_root = workspace if (workspace / ".mic").is_dir() else None
    config = Config(workspace=workspace, workspace_root=workspace_root, sources=sources, **merged)  # type: ignore[arg-type]
    return config.validate()


def _defaults(env: Mapping[str, str], home: Path, session: str) -> dict[str, object]:
    """Every key's default; the directories follow the XDG base-directory variables."""
    cache_home = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    state_home = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
    data_home = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    return {
        "cache_dir": cache_home / "mic" / "store",
        # 128 MiB: the disk tier's files sit in the page cache anyway, and a per-session daemon must stay under
        # 512 MiB RSS with 200 clients (issue 10); 256 MiB of cache left too little room for requests in flight.
        "memory_budget": 128 << 20,
        "disk_soft_cap": 20 << 30,
        "disk_hard_cap": 25 << 30,
        "s3_bucket": None,
        "s3_prefix": "",
        "s3_endpoint_url": None,
        "s3_region": None,
        "state_dir": state_home / "mic" / "sessions" / session,
        "idle_timeout": 3600.0,
        "drain_timeout": 10.0,
        "log_level": "INFO",
        "store_url": f"file://{data_home / 'mic' / 'projects'}",
        "vcs_s3_endpoint_url": None,
        "watch": True,
        "watch_min_files": 10_000,
        "watch_idle_timeout": 1800.0,
        "debug_kill_at": None,
        "bazel_instance_name": "",
    }
