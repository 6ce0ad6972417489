"""A lander process for concurrency tests: waits for a start file, lands its workspace, prints one JSON line.

    python -m tests.mic.lander_worker WORKSPACE GOAL GO_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from mic.errors import Conflict
from mic.objects import Project
from mic.objectstore import open_store
from mic.vcs import land_workspace
from mic.workspace import Workspace
from micd.config import load_config


async def _main(root: Path, goal: str, go: Path) -> dict[str, object]:
    config = load_config(cwd=root)
    store = open_store(config.store_url, s3_endpoint_url=config.vcs_s3_endpoint_url)
    ws = Workspace.open(config.workspace_root)
    project = Project(store, ws.state.project)
    try:
        await project.read_head()  # connect before the start line
        while not go.exists():
            await asyncio.sleep(0.002)
        try:
            out = await land_workspace(project, ws, goal)
        except Conflict as exc:
            return {"conflict": list(exc.paths), "sessions": list(exc.sessions), "pid": os.getpid()}
        return {"position": out.result.landing.position, "session": out.result.landing.session,
                "attempts": out.result.attempts}
    finally:
        await store.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))), flush=True)
