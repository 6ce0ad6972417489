"""`land_workspace` against edits made while it runs: no edit is recorded as unchanged or silently overwritten."""

from __future__ import annotations

import asyncio

import pytest

from mic import vcs
from mic.objects import Project
from mic.workspace import Workspace


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


async def test_an_edit_made_while_the_sync_fetches_is_kept(project, tmp_path, monkeypatch):
    """The sync checks a file still holds its base version after fetching the new content (seconds on S3), right
    before writing it: an edit made during the fetch is kept and reported, never overwritten."""
    ours = await _behind_on_g(project, tmp_path)
    (ours.root / "f.txt").write_text("f\n")
    g = ours.root / "g.txt"
    real_read = Project.read_content

    async def read_then_edit(self, h):
        data = await real_read(self, h)
        if data == b"their change\n":
            g.write_text("our edit, made while the sync fetched\n")
            await asyncio.sleep(0.15)  # past the racy window
        return data

    monkeypatch.setattr(Project, "read_content", read_then_edit)
    out = await vcs.land_workspace(project, ours, "add f")

    assert g.read_text() == "our edit, made while the sync fetched\n"
    assert out.kept == ("g.txt",)
    assert (await vcs.status(Workspace.open(ours.root))).changes["g.txt"][0] == "modified"


async def _two_workspaces(project, tmp_path, files: dict[str, str]) -> tuple[Workspace, Workspace]:
    """`theirs` lands `files` (plus other.txt); `ours` is checked out at that landing."""
    theirs = await _checkout(project, tmp_path / "theirs")
    for rel, text in {**files, "other.txt": "o\n"}.items():
        (theirs.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (theirs.root / rel).write_text(text)
    await vcs.land_workspace(project, theirs, "base")
    return theirs, await _checkout(project, tmp_path / "ours")


async def test_a_directory_replaced_by_a_file_is_synced(project, tmp_path):
    """Removals run before writes: `d` is written once the removal of `d/x` has pruned the directory (the old
    sync checked `d` while `d/x` was still there, kept it as a "local edit", and the next land deleted it)."""
    theirs, ours = await _two_workspaces(project, tmp_path, {"d/x": "x\n", "d/y/z": "z\n"})
    (theirs.root / "d" / "x").unlink()
    (theirs.root / "d" / "y" / "z").unlink()
    (theirs.root / "d" / "y").rmdir()
    (theirs.root / "d").rmdir()
    (theirs.root / "d").write_text("now a file\n")
    await vcs.land_workspace(project, theirs, "d becomes a file")

    (ours.root / "other.txt").write_text("o2\n")
    out = await vcs.land_workspace(project, ours, "edit other")
    assert out.kept == ()
    assert (ours.root / "d").read_text() == "now a file\n"
    assert (await vcs.status(Workspace.open(ours.root))).changes == {}


async def test_a_file_replaced_by_a_directory_is_synced(project, tmp_path):
    theirs, ours = await _two_workspaces(project, tmp_path, {"d": "file\n"})
    (theirs.root / "d").unlink()
    (theirs.root / "d").mkdir()
    (theirs.root / "d" / "x").write_text("x\n")
    await vcs.land_workspace(project, theirs, "d becomes a directory")

    (ours.root / "other.txt").write_text("o2\n")
    out = await vcs.land_workspace(project, ours, "edit other")
    assert out.kept == ()
    assert (ours.root / "d" / "x").read_text() == "x\n"
    assert (await vcs.status(Workspace.open(ours.root))).changes == {}


async def test_a_local_edit_blocking_a_file_directory_swap_is_kept(project, tmp_path, monkeypatch):
    """An edit (made during the land) in the way of a file<->directory replacement is kept and reported; the
    sync does not fail."""
    theirs, ours = await _two_workspaces(project, tmp_path, {"d/x": "x\n", "e": "e\n"})
    (theirs.root / "d" / "x").unlink()
    (theirs.root / "d").rmdir()
    (theirs.root / "d").write_text("now a file\n")
    (theirs.root / "e").unlink()
    (theirs.root / "e").mkdir()
    (theirs.root / "e" / "y").write_text("y\n")
    await vcs.land_workspace(project, theirs, "swap d and e")

    def edit() -> None:
        (ours.root / "d" / "x").write_text("our x\n")  # d/x stays, so the file d cannot be written
        (ours.root / "e").write_text("our e\n")  # e stays a file, so e/y cannot be written

    _edit_during_land(monkeypatch, edit)
    (ours.root / "other.txt").write_text("o2\n")
    out = await vcs.land_workspace(project, ours, "edit other")

    assert out.kept == ("d", "d/x", "e", "e/y")
    assert (ours.root / "d" / "x").read_text() == "our x\n"
    assert (ours.root / "e").read_text() == "our e\n"


async def test_crash_recovery_keeps_a_file_reverted_after_the_crash(project, tmp_path, monkeypatch):
    """An interrupted land landed a.txt and b.txt; the user then put a.txt back. The re-run finishes the landing
    but keeps the user's a.txt (reported as kept, shown as modified) instead of writing the landed version."""
    ws = await _checkout(project, tmp_path / "ws")
    (ws.root / "a.txt").write_text("base\n")
    await vcs.land_workspace(project, ws, "base")
    (ws.root / "a.txt").write_text("changed by the interrupted land\n")
    (ws.root / "b.txt").write_text("b\n")
    real_land = vcs.land

    async def land_then_crash(*args, **kwargs):
        await real_land(*args, **kwargs)
        raise RuntimeError("killed after landing")

    monkeypatch.setattr(vcs, "land", land_then_crash)
    with pytest.raises(RuntimeError):
        await vcs.land_workspace(project, ws, "interrupted")
    monkeypatch.setattr(vcs, "land", real_land)

    ws = Workspace.open(ws.root)
    assert ws.state.session is not None  # the workspace still names the session that landed
    (ws.root / "a.txt").write_text("base\n")
    await asyncio.sleep(0.15)  # past the racy window
    out = await vcs.land_workspace(project, ws, None)

    assert out.result.recovered
    assert (ws.root / "a.txt").read_text() == "base\n"
    assert out.kept == ("a.txt",)
    assert out.unmerged == () and ws.state.unmerged == {}  # only our own landed change: nothing of another's lost
    changes = (await vcs.status(Workspace.open(ws.root))).changes
    assert set(changes) == {"a.txt"} and changes["a.txt"][0] == "modified"


async def test_a_git_path_in_older_history_is_skipped_not_fatal(project, tmp_path, monkeypatch):
    """Older versions could land `sub/.git` (a submodule link). Checkout and the sync skip it and say so; the
    workspace works, and the path stays in history."""
    from mic import landing
    from mic.formats.btree_node import FileEntry
    from mic.objects import content_hash
    from mic.session import start_session

    monkeypatch.setattr(landing, "check_path", lambda path: None)  # as the older versions did
    session = await start_session(project, "old history", 0, 1)
    files = {"ok.txt": b"ok\n", "sub/.git": b"gitdir: ../.git/modules/sub\n"}
    changes = {p: FileEntry(content_hash(d), len(d), 0) for p, d in files.items()}

    async def write_blobs() -> int:
        return sum([(await project.put_content(d))[1] for d in files.values()])

    await landing.land(project, session, changes, dict.fromkeys(files, "added"), write_blobs, hlc=lambda t: t + 1)
    monkeypatch.undo()

    skipped: list[str] = []
    ws = await vcs.checkout(
        project, tmp_path / "ws", store_url=f"file://{tmp_path / 'store'}", s3_endpoint_url=None, skipped=skipped
    )
    assert skipped == ["sub/.git"]
    assert (ws.root / "ok.txt").read_text() == "ok\n" and not (ws.root / "sub").exists()
    assert (await vcs.status(Workspace.open(ws.root))).changes == {}

    early = await vcs.checkout(
        project, tmp_path / "early", store_url=f"file://{tmp_path / 'store'}", s3_endpoint_url=None, position=0
    )
    (early.root / "new.txt").write_text("n\n")
    out = await vcs.land_workspace(project, early, "after the old history")  # its sync meets sub/.git
    assert out.skipped == ("sub/.git",)
    assert (early.root / "ok.txt").read_text() == "ok\n"


async def test_the_sync_never_writes_through_a_symlink_made_during_the_land(project, tmp_path, monkeypatch):
    """Another session landed d/x; while we land, a symlink d appears here pointing outside the workspace. The
    sync must not write x through it (outside the workspace): the path is kept and reported."""
    ours = await _checkout(project, tmp_path / "ours")
    theirs = await _checkout(project, tmp_path / "theirs")
    (theirs.root / "d").mkdir()
    (theirs.root / "d" / "x").write_text("theirs\n")
    await vcs.land_workspace(project, theirs, "add d/x")

    outside = tmp_path / "outside"
    outside.mkdir()
    (ours.root / "f.txt").write_text("f\n")
    _edit_during_land(monkeypatch, lambda: (ours.root / "d").symlink_to(outside))
    out = await vcs.land_workspace(project, ours, "add f")

    assert list(outside.iterdir()) == []
    assert "d/x" in out.kept
