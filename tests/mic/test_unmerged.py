"""Unmerged paths: a local edit the post-land sync kept over another session's change must not land unchanged.

The sync after `mic land` keeps a file edited here (during the land) instead of overwriting it, and makes the
landed version its base. Landing it as it is would silently undo the other session's change (a lost update), so
the path is recorded as unmerged, and `mic land` refuses until it is resolved or equals the landed version."""

from __future__ import annotations

import json

import pytest

from mic import vcs

from .test_land_workspace import _checkout, _edit_during_land

OURS_EDIT = "our edit, made while landing\n"


def _state(ws) -> dict:
    return json.loads((ws / ".mic" / "state.json").read_text())


def _store_files(tmp_path) -> dict[str, bytes]:
    store = tmp_path / "store"
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture
def unmerged_ws(local_store_env, mic, tmp_path, monkeypatch):
    """`ours` lands f.txt while another session's change to g.txt is already landed; during that land the user
    edits g.txt here, so the sync keeps the edit. Returns (ours, theirs, their session id)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    (ours / "g.txt").write_text("base\n")
    mic(ours, "init", "--project", "p")
    mic(ours, "land", "add g")
    mic(tmp_path, "checkout", "p", str(theirs))
    (theirs / "g.txt").write_text("their change\n")
    their_session = mic.json(theirs, "land", "change g")["session"]

    (ours / "f.txt").write_text("f\n")
    real_land = vcs.land
    _edit_during_land(monkeypatch, lambda: (ours / "g.txt").write_text(OURS_EDIT))
    out = mic.json(ours, "land", "add f")
    monkeypatch.setattr(vcs, "land", real_land)
    assert out["kept_local_edits"] == ["g.txt"] and out["unmerged"] == ["g.txt"]
    assert (ours / "g.txt").read_text() == OURS_EDIT
    return ours, theirs, their_session


def test_a_concurrent_change_kept_as_a_local_edit_becomes_unmerged(unmerged_ws, mic):
    ours, _, their_session = unmerged_ws
    assert _state(ours)["unmerged"] == {"g.txt": their_session}
    st = mic.json(ours, "status")
    assert st["unmerged"] == [{"path": "g.txt", "session": their_session}]
    assert st["changes"] == [{"path": "g.txt", "kind": "modified"}]
    human = mic(ours, "status").output
    assert f"U g.txt  (changed by session {their_session})" in human
    assert "mic resolve <path>" in human


def test_land_refuses_while_unmerged_and_writes_nothing(unmerged_ws, mic, tmp_path):
    ours, _, their_session = unmerged_ws
    (ours / "h.txt").write_text("another change\n")
    store_before, state_before = _store_files(tmp_path), _state(ours)

    out = mic(ours, "land", "more", code=3)
    assert "unmerged" in out.output and "g.txt" in out.output and their_session in out.output
    assert "mic resolve" in out.output
    err = mic.json(ours, "land", "more", code=3)
    assert err["kind"] == "Conflict" and err["paths"] == ["g.txt"] and err["sessions"] == [their_session]

    assert _store_files(tmp_path) == store_before  # no landing, no session, no blob
    assert _state(ours) == state_before
    assert (ours / "g.txt").read_text() == OURS_EDIT


def test_resolve_then_land_lands_the_merged_content(unmerged_ws, mic, tmp_path):
    ours, theirs, _ = unmerged_ws
    (ours / "g.txt").write_text("their change\n" + OURS_EDIT)  # merged by hand
    out = mic.json(ours, "resolve", "g.txt")
    assert out == {"resolved": ["g.txt"], "unmerged": []}
    assert "unmerged" not in _state(ours)  # an older mic can read the state again
    assert mic.json(ours, "status")["unmerged"] == []

    landed = mic.json(ours, "land", "merge g")
    assert landed["paths"] == ["g.txt"]
    mic(theirs, "checkout", "p", str(tmp_path / "fresh"))
    assert (tmp_path / "fresh" / "g.txt").read_text() == "their change\n" + OURS_EDIT


def test_resolve_works_from_a_subdirectory(unmerged_ws, mic):
    ours, _, _ = unmerged_ws
    (ours / "sub").mkdir()
    assert mic.json(ours / "sub", "resolve", "../g.txt")["resolved"] == ["g.txt"]


def test_taking_their_version_clears_it_without_resolve(unmerged_ws, mic):
    ours, _, _ = unmerged_ws
    (ours / "g.txt").write_text("their change\n")
    st = mic.json(ours, "status")
    assert st["unmerged"] == [] and st["changes"] == []
    assert "unmerged" not in _state(ours)

    (ours / "g.txt").write_text("a later edit, on top of theirs\n")  # new work, not unmerged again
    assert mic.json(ours, "status")["unmerged"] == []
    assert mic.json(ours, "land", "later")["paths"] == ["g.txt"]


def test_land_itself_clears_a_path_that_equals_their_version(unmerged_ws, mic):
    ours, _, _ = unmerged_ws
    (ours / "g.txt").write_text("their change\n")
    (ours / "h.txt").write_text("h\n")
    assert mic.json(ours, "land", "h")["paths"] == ["h.txt"]  # no `mic status` in between


def test_a_deleted_unmerged_file_lands_its_deletion_only_once_resolved(unmerged_ws, mic, tmp_path):
    ours, _, _ = unmerged_ws
    (ours / "g.txt").unlink()
    st = mic.json(ours, "status")
    assert st["unmerged"][0]["path"] == "g.txt" and st["changes"] == [{"path": "g.txt", "kind": "deleted"}]
    mic(ours, "land", "drop g", code=3)
    mic(ours, "resolve", "g.txt")
    assert mic.json(ours, "land", "drop g")["paths"] == ["g.txt"]
    assert not (ours / "g.txt").exists()


def test_resolve_of_a_path_that_is_not_unmerged_is_an_error(unmerged_ws, mic):
    ours, _, _ = unmerged_ws
    out = mic(ours, "resolve", "f.txt", "g.txt", code=2)
    assert "not unmerged: f.txt" in out.output and "unmerged paths: g.txt" in out.output
    assert "g.txt" in _state(ours)["unmerged"]  # nothing was marked
    err = mic.json(ours, "resolve", "nope.txt", code=2)
    assert "not unmerged: nope.txt" in err["error"]
    mic(ours, "resolve", "g.txt")
    assert "unmerged paths: none" in mic(ours, "resolve", "g.txt", code=2).output


def test_an_older_state_file_without_the_field_loads(local_store_env, mic, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a\n")
    mic(ws, "init", "--project", "p")
    mic(ws, "land", "first")
    state = _state(ws)
    old = {k: state[k] for k in ("project", "base", "base_tree", "session", "hlc")}  # what older versions wrote
    (ws / ".mic" / "state.json").write_text(json.dumps(old))
    st = mic.json(ws, "status")
    assert st["unmerged"] == [] and st["changes"] == []
    (ws / "a.txt").write_text("a2\n")
    assert mic.json(ws, "land", "second")["paths"] == ["a.txt"]


def test_the_unmerged_field_is_validated(local_store_env, mic, tmp_path):
    """A well-formed map loads (status lists it); a damaged one gives the "unreadable" error, not a traceback."""
    ws = tmp_path / "ws"
    ws.mkdir()
    mic(ws, "init", "--project", "p")
    (ws / "g.txt").write_text("ours\n")  # differs from the base (no file): stays unmerged
    state = _state(ws)
    (ws / ".mic" / "state.json").write_text(json.dumps({**state, "unmerged": {"g.txt": ""}}))
    assert mic.json(ws, "status")["unmerged"] == [{"path": "g.txt", "session": None}]
    for bad in ([], {"g.txt": 5}, {"": "s"}, None):
        (ws / ".mic" / "state.json").write_text(json.dumps({**state, "unmerged": bad}))
        assert "state.json is unreadable" in mic(ws, "status", code=1).output, bad


async def test_an_untracked_file_in_the_way_of_their_new_file_is_unmerged(tmp_path, monkeypatch):
    """Another session added n.txt; a file n.txt created here during our land is kept. Landing it would replace
    their file without a conflict (add/add), so it is unmerged too."""
    from mic.objects import Project
    from mic.objectstore import open_store
    from mic.workspace import Workspace

    store = open_store(f"file://{tmp_path / 'store'}")
    project = Project(store, "p")
    await project.create(1)
    try:
        ours = await _checkout(project, tmp_path / "ours")
        theirs = await _checkout(project, tmp_path / "theirs")
        (theirs.root / "n.txt").write_text("theirs\n")
        their = await vcs.land_workspace(project, theirs, "add n")
        (ours.root / "f.txt").write_text("f\n")
        _edit_during_land(monkeypatch, lambda: (ours.root / "n.txt").write_text("ours, created while landing\n"))
        out = await vcs.land_workspace(project, ours, "add f")
        assert out.unmerged == ("n.txt",)
        assert Workspace.open(ours.root).state.unmerged == {"n.txt": their.session.id}
    finally:
        await store.close()
