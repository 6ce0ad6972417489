"""Crash injection: `mic land` is SIGKILLed after every step; the store shows nothing or a complete landing, the
next lander rolls forward, and re-running the crashed land finishes (or redoes) it exactly once."""

from __future__ import annotations

import asyncio
import signal

import pytest

from mic.landing import KILL_POINTS
from mic.objects import Project
from mic.objectstore import open_store
from mic.tree import Tree
from micd.config import load_config
from tests.mic.conftest import run_mic

BEFORE_RECORD = ("rolled-forward", "checked", "objects-written")


async def _inspect(workspace):
    config = load_config(cwd=workspace)
    store = open_store(config.store_url, s3_endpoint_url=config.vcs_s3_endpoint_url)
    project = Project(store, "p")
    try:
        head, _ = await project.read_head()
        rec = await project.landing(2)
        files = None
        if rec is not None:  # complete: every node and blob of the new tree is there and verifies
            files = {p: (await project.read_content(e.hash)).decode() async for p, e in Tree(project).items(rec.tree)}
        return head.position, rec, files
    finally:
        await store.close()


def test_kill_points_cover_every_step():
    assert KILL_POINTS == ("rolled-forward", "checked", "objects-written", "landing-created", "head-advanced",
                           "session-updated")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_crash_between_landing_steps(point, store_env, mic, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x.txt").write_text("x0\n")
    (a / "y.txt").write_text("y0\n")
    mic(a, "init", "--project", "p")
    mic(a, "land", "base")
    mic(tmp_path, "checkout", "p", str(b))

    (a / "x.txt").write_text("x1\n")
    crashed = run_mic(a, "land", "crashing land", env_extra={**store_env, "MIC_DEBUG_KILL_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    head, rec, files = asyncio.run(_inspect(a))
    if point in BEFORE_RECORD:
        assert rec is None and head == 1  # nothing visible
    else:
        assert rec is not None and rec.paths == ("x.txt",) and files == {"x.txt": "x1\n", "y.txt": "y0\n"}
        assert head == (1 if point == "landing-created" else 2)

    (b / "y.txt").write_text("y1\n")
    other = mic.json(b, "land", "other lander")
    expected_other = 2 if point in BEFORE_RECORD else 3
    assert other["position"] == expected_other  # rolled forward over a lagging head if needed
    assert asyncio.run(_inspect(a))[0] == expected_other

    again = mic.json(a, "land")
    if point in BEFORE_RECORD:
        assert again["position"] == 3 and not again["recovered"]
    else:
        assert again["position"] == 2 and again["recovered"]
    assert mic.json(a, "status")["changes"] == []
    # the workspace now sits at its own landing: after b's (3) when redone, before it (2) when recovered
    assert (a / "y.txt").read_text() == ("y1\n" if point in BEFORE_RECORD else "y0\n")
    shown = mic.json(a, "show", again["session"])
    assert shown["status"] == "landed" and shown["landed"] == again["position"]
    assert [r["position"] for r in mic.json(a, "log")["landings"]] == [3, 2, 1]
