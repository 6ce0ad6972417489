"""Client configuration the daemon generates in its state dir so unmodified tools find it.

Every frontend's `ClientConfig` (see micd/frontend.py) is rendered from the daemon's endpoints and token: its
files are written into the state dir, and all frontends' environment variables into one environment file,
`env.json` ({"version": 1, "env": {NAME: value}}), which `mic` reads (`micd.client.read_environment`) without
importing any protocol. All of it is written before `ports.json`, so whoever sees the daemon ready finds its
configuration too, and removed at shutdown. The files may carry the session token: mode 0600, each written
atomically (temp + fsync + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from micd.frontend import ClientContext, Frontend, check_client_config
from micd.statedir import StatePaths
from mickernel.atomic import write_atomic

__all__ = ["ENV_VERSION", "remove_client_configs", "write_client_configs"]

ENV_VERSION = 1


def write_client_configs(
    state_dir: Path,
    frontends: Sequence[Frontend],
    *,
    http_port: int,
    grpc_port: int,
    token: str,
    settings: Callable[[str], dict[str, Any]],
) -> list[Path]:
    """Render and write every frontend's client files and the environment file; return the paths written.

    `settings(name)` gives a tool's `[tools.<name>]` values. Raises ValueError if two frontends claim one
    file or environment variable, before anything is written.
    """
    state_dir = Path(state_dir)
    env_file = StatePaths(state_dir).env
    http_url = f"http://127.0.0.1:{http_port}"
    files: dict[str, tuple[str, str]] = {}  # file name → (frontend, text)
    env: dict[str, tuple[str, str]] = {}  # variable → (frontend, value)
    for frontend in frontends:
        if frontend.client is None:
            continue
        context = ClientContext(
            url=http_url + (frontend.prefix or ""),
            http_url=http_url,
            grpc_url=f"grpc://127.0.0.1:{grpc_port}",
            token=token,
            state_dir=state_dir,
            settings=settings(frontend.name),
        )
        config = frontend.client(context)
        check_client_config(frontend.name, config)
        for table, items in ((files, config.files), (env, config.env)):
            for key, value in items.items():
                if key in table or key == env_file.name:
                    owner = table[key][0] if key in table else "the daemon"
                    raise ValueError(f"frontends {frontend.name} and {owner} both write {key}")
                table[key] = (frontend.name, value)
    written = []
    for name, (_, text) in files.items():
        write_atomic(state_dir / name, text, mode=0o600)
        written.append(state_dir / name)
    document = {"version": ENV_VERSION, "env": {name: value for name, (_, value) in sorted(env.items())}}
    write_atomic(env_file, json.dumps(document, indent=2) + "\n", mode=0o600)
    written.append(env_file)
    return written


def remove_client_configs(paths: Sequence[Path]) -> None:
    """Remove what `write_client_configs` wrote (at shutdown: it names ports nobody will serve)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
