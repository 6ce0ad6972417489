"""`land_workspace` against edits made while it runs: no edit is recorded as unchanged or silently overwritten."""

from __future__ import annotations

import asyncio

import pytest

from mic import vcs
from mic.objects import Project
from mic.objectstore import open_store
from mic.workspace import Workspace


@pytest.fixture
async def project(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    p = Project(store, "p")
    await p.create(1)
    yield p
    await store.close()


async def _checkout(project: Project, root) -> Workspace:
    url = f"file://{root.parent / 'store'}"
    return await vcs.checkout(project, root, store_url=url, s3_endpoint_url=None)


def _edit_during_land(monkeypatch, edit) -> None:
    """Make `land` run `edit()` after landing and before `land_workspace` records the new base (as a user or
    another agent would while a land waits on S3)."""
    real_land = vcs.land

    async def land_then_edit(*args, **kwargs):
        result = await real_land(*args, **kwargs)
        edit()
        await asyncio.sleep(0.15)  # past the racy window: the edit must be seen by its stat, not by luck
        return result

    monkeypatch.setattr(vcs, "land", land_then_edit)


async def test_an_edit_of_a_landed_file_during_the_land_shows_in_status(project, tmp_path, monkeypatch):
    ws = await _checkout(project, tmp_path / "ws")
    f = ws.root / "f.txt"
    f.write_text("version one\n")
    await asyncio.sleep(0.15)
    _edit_during_land(monkeypatch, lambda: f.write_text("version two, longer\n"))
    out = await vcs.land_workspace(project, ws, "first")
    assert out.result.landing.paths == ("f.txt",)

    fresh = Workspace.open(ws.root)
    result = await vcs.status(fresh)
    assert f.read_text() == "version two, longer\n"
    assert result.changes["f.txt"][0] == "modified"


async def _behind_on_g(project, tmp_path):
    """Our workspace, with g.txt at "base\n" while another session has landed "their change\n" over it."""
    ours = await _checkout(project, tmp_path / "ours")
    (ours.root / "g.txt").write_text("base\n")
    await vcs.land_workspace(project, ours, "add g")
    theirs = await _checkout(project, tmp_path / "theirs")
    (theirs.root / "g.txt").write_text("their change\n")
    await vcs.land_workspace(project, theirs, "change g")
    return ours


async def test_a_file_edited_during_the_land_is_not_overwritten_by_the_sync(project, tmp_path, monkeypatch):
    ours = await _behind_on_g(project, tmp_path)

    # we land an unrelated file; while landing, we edit g.txt, which the sync would bring to their version
    (ours.root / "f.txt").write_text("f\n")
    g = ours.root / "g.txt"
    _edit_during_land(monkeypatch, lambda: g.write_text("our edit, made while landing\n"))
    out = await vcs.land_workspace(project, ours, "add f")

    assert g.read_text() == "our edit, made while landing\n"
    assert out.kept == ("g.txt",)
    result = await vcs.status(Workspace.open(ours.root))
    assert result.changes["g.txt"][0] == "modified"  # against their landed version, which is now the base


async def test_the_sync_still_updates_untouched_files(project, tmp_path):
    ours = await _behind_on_g(project, tmp_path)

    (ours.root / "f.txt").write_text("f\n")
    out = await vcs.land_workspace(project, ours, "add f")
    assert (ours.root / "g.txt").read_text() == "their change\n"
    assert out.kept == () and out.synced == 1
    assert (await vcs.status(Workspace.open(ours.root))).changes == {}
