"""mic's configuration: one frozen dataclass and one loader applying the documented precedence.

Precedence (highest first): CLI flags > `MIC_*` environment variables > the workspace `mic.toml` (found by walking
up from the current directory) > `~/.config/mic/config.toml` > defaults. mic's keys live in the `[vcs]` table:

    [vcs]                                   # also .mic/config.toml, written by checkout
    store_url = "s3://bucket/prefix"        # or file:///path; env MIC_STORE_URL, flag --store
    s3_endpoint_url = "http://127.0.0.1:9000"  # env MIC_S3_ENDPOINT_URL
    watch = "on"                            # "off": never use or start the file watcher; env MIC_WATCH
    watch_min_files = "10000"               # start a watcher only for larger workspaces; env MIC_WATCH_MIN_FILES
    watch_idle_timeout = "1800"             # seconds a watcher lives without a request; env MIC_WATCH_IDLE_TIMEOUT

This is the only module of `mic` that reads `os.environ`. `MIC_DEBUG_KILL_AT` is a test hook: the lander kills its
own process with SIGKILL at the named step, so crash tests can run the real CLI.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from mic.errors import ConfigError

__all__ = ["KEYS", "MicConfig", "find_workspace_root", "load_config"]

#: key -> environment variable name
KEYS = {
    "store_url": "MIC_STORE_URL",
    "s3_endpoint_url": "MIC_S3_ENDPOINT_URL",
    "debug_kill_at": "MIC_DEBUG_KILL_AT",
    "watch": "MIC_WATCH",
    "watch_min_files": "MIC_WATCH_MIN_FILES",
    "watch_idle_timeout": "MIC_WATCH_IDLE_TIMEOUT",
}


@dataclass(frozen=True)
class MicConfig:
    """Effective mic settings; `sources[key]` says where each value came from (for messages and `config show`)."""

    store_url: str
    s3_endpoint_url: str | None = None
    debug_kill_at: str | None = None
    watch: str = "on"
    watch_min_files: str = "10000"
    watch_idle_timeout: str = "1800"
    workspace_root: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every value; the message names the key and the place its value came from."""
        parsed = urlparse(self.store_url)
        if parsed.scheme not in ("file", "s3"):
            raise ConfigError(
                f"vcs.store_url = {self.store_url!r} (from {self.sources.get('store_url', 'default')}) "
                "must start with file:// or s3://"
            )
        if parsed.scheme == "s3" and not parsed.netloc:
            raise ConfigError(
                f"vcs.store_url = {self.store_url!r} (from {self.sources.get('store_url')}) names no bucket: "
                "use s3://BUCKET/optional/prefix"
            )
        if parsed.scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
            raise ConfigError(
                f"vcs.store_url = {self.store_url!r} (from {self.sources.get('store_url')}) must be an absolute "
                "file:///path"
            )
        if self.s3_endpoint_url is not None and urlparse(self.s3_endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"vcs.s3_endpoint_url = {self.s3_endpoint_url!r} (from {self.sources.get('s3_endpoint_url')}) "
                "must be an http:// or https:// URL"
            )
        if self.watch not in ("on", "off"):
            raise ConfigError(f"vcs.watch = {self.watch!r} (from {self.sources.get('watch')}) must be on or off")
        if not self.watch_min_files.isdigit():
            raise ConfigError(
                f"vcs.watch_min_files = {self.watch_min_files!r} (from {self.sources.get('watch_min_files')}) "
                "must be a whole number of files"
            )
        try:
            idle = float(self.watch_idle_timeout)
        except ValueError:
            idle = -1.0
        if not 0 < idle < float("inf"):
            raise ConfigError(
                f"vcs.watch_idle_timeout = {self.watch_idle_timeout!r} (from {self.sources.get('watch_idle_timeout')})"
                " must be a positive number of seconds"
            )


def find_workspace_root(start: Path) -> Path | None:
    """Return the nearest directory at or above `start` holding `.mic/` (a mic workspace), or None."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / ".mic").is_dir():
            return candidate
    return None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    table = data.get("vcs", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [vcs] must be a table")
    unknown = set(table) - set(KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [vcs]: {', '.join(sorted(unknown))}")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: vcs.{key} must be a string, got {type(value).__name__}")
    return table


def _default_store_url() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return "file://" + str(Path(data_home) / "mic" / "projects")


def load_config(flags: dict[str, str | None] | None = None, *, cwd: Path | None = None) -> MicConfig:
    """Build the effective config: flags > MIC_* env > workspace mic.toml > user config.toml > defaults.

    Args:
        flags: values given on the command line (None means "not given").
        cwd: where to start looking for the workspace (default: the current directory).

    Raises:
        ConfigError: a file does not parse or a value is invalid.
    """
    flags = flags or {}
    root = find_workspace_root(cwd or Path.cwd())
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    layers: list[tuple[str, dict[str, object]]] = [
        ("flag", {k: v for k, v in flags.items() if v is not None}),
        ("env", {k: os.environ[env] for k, env in KEYS.items() if os.environ.get(env)}),
    ]
    if root is not None:
        layers.append((str(root / "mic.toml"), _read_toml(root / "mic.toml")))
        # written by `mic checkout`/`mic init`: the store this workspace was checked out from
        layers.append((str(root / ".mic" / "config.toml"), _read_toml(root / ".mic" / "config.toml")))
    user_file = Path(config_home) / "mic" / "config.toml"
    layers.append((str(user_file), _read_toml(user_file)))
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        for origin, layer in layers:
            if key in layer:
                values[key], sources[key] = layer[key], origin
                break
    if "store_url" not in values:
        values["store_url"], sources["store_url"] = _default_store_url(), "default"
    config = MicConfig(**values, workspace_root=root, sources=sources)  # type: ignore[arg-type]
    config.validate()
    return config
