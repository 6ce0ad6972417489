"""16 concurrent landers as separate processes: disjoint paths all land; overlapping paths conflict exactly;
never a lost update (every landing is checked against every landing between its base and itself)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mic.objects import Project
from mic.objectstore import open_store
from mic.tree import Tree
from micd.config import load_config
from tests.conformance.objectstore_fixtures import s3_atomic, s3_atomic_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
N = 16


def _prepare(mic, tmp_path: Path, n: int) -> list[Path]:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "shared.txt").write_text("base\n")
    for i in range(n // 2):
        (seed / f"pair{i}.txt").write_text("base\n")
    mic(seed, "init", "--project", "race")
    mic(seed, "land", "seed")
    workspaces = []
    for i in range(n):
        ws = tmp_path / f"w{i}"
        mic(tmp_path, "checkout", "race", str(ws))
        workspaces.append(ws)
    return workspaces


def _run_landers(workspaces: list[Path], tmp_path: Path) -> list[dict]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.mic.lander_worker", str(ws), f"lander {i}", str(go)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, ws in enumerate(workspaces)
    ]
    time.sleep(2.0)  # every worker imported and connected
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


async def _history(workspace: Path):
    config = load_config(cwd=workspace)
    store = open_store(config.store_url, s3_endpoint_url=config.vcs_s3_endpoint_url)
    project = Project(store, "race")
    try:
        head, _ = await project.read_head()
        records = []
        pos = 1
        while (rec := await project.landing(pos)) is not None:
            records.append(rec)
            pos += 1
        tree = Tree(project)
        files = {p: (await project.read_content(e.hash)).decode() async for p, e in tree.items(records[-1].tree)}
        return head, records, files
    finally:
        await store.close()


def _check_serializable(records) -> None:
    """No lost update: a landing never overlaps a landing between its base and itself."""
    for rec in records:
        for other in records[rec.base : rec.position - 1]:
            assert not set(rec.paths) & set(other.paths), (rec.position, other.position)


def _write_changes(workspaces: list[Path], overlapping: bool) -> None:
    for i, ws in enumerate(workspaces):
        (ws / f"own{i}.txt").write_text(f"lander {i}\n")
        if overlapping:
            (ws / f"pair{i // 2}.txt").write_text(f"lander {i}\n")
            if i % 4 == 0:
                (ws / "shared.txt").write_text(f"lander {i}\n")


@pytest.mark.timeout(300)
def test_16_disjoint_landers_all_land(local_store_env, mic, tmp_path):
    workspaces = _prepare(mic, tmp_path, N)
    _write_changes(workspaces, overlapping=False)
    results = _run_landers(workspaces, tmp_path)
    assert all("position" in r for r in results), results
    assert sorted(r["position"] for r in results) == list(range(2, N + 2))
    head, records, files = asyncio.run(_history(workspaces[0]))
    assert len(records) == N + 1
    _check_serializable(records)
    assert all(files[f"own{i}.txt"] == f"lander {i}\n" for i in range(N))
    assert head.position <= N + 1  # the head may lag; readers roll forward


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_16_overlapping_landers_conflict_exactly(kind, mic, tmp_path, monkeypatch, request):
    if kind == "local":
        request.getfixturevalue("local_store_env")
    else:
        endpoint, bucket = request.getfixturevalue("s3_atomic")  # real S3 semantics: see serial_moto.py
        monkeypatch.setenv("MIC_STORE_URL", f"s3://{bucket}/race")
        monkeypatch.setenv("MIC_S3_ENDPOINT_URL", endpoint)
    workspaces = _prepare(mic, tmp_path, N)
    _write_changes(workspaces, overlapping=True)
    results = _run_landers(workspaces, tmp_path)
    _head, records, files = asyncio.run(_history(workspaces[0]))
    _check_serializable(records)
    landed = {r["session"]: i for i, r in enumerate(results) if "position" in r}
    by_session = {rec.session: rec for rec in records[1:]}
    assert set(landed) == set(by_session)
    # each pair file is touched by two landers: at most one of them lands, and the pair is never lost
    for pair in range(N // 2):
        winners = [i for i in landed.values() if i // 2 == pair]
        assert len(winners) <= 1
    assert len([i for i in landed.values() if i % 4 == 0]) <= 1  # shared.txt has one winner at most
    assert landed, "somebody must win"
    for i, r in enumerate(results):
        if "conflict" in r:
            # the conflict names a landed session that touched the same path after this lander's base (@1)
            assert r["sessions"] and all(s in by_session for s in r["sessions"])
            mine = {f"own{i}.txt", f"pair{i // 2}.txt"} | ({"shared.txt"} if i % 4 == 0 else set())
            assert set(r["conflict"]) <= mine
            assert any(set(by_session[s].paths) & set(r["conflict"]) for s in r["sessions"])
        else:
            assert files[f"own{i}.txt"] == f"lander {i}\n" and files[f"pair{i // 2}.txt"] == f"lander {i}\n"
    # a lander losing only because of a pair partner must have been beaten by exactly that partner
    for i, r in enumerate(results):
        if "conflict" in r and r["conflict"] == [f"pair{i // 2}.txt"]:
            assert [landed.get(s) for s in r["sessions"]] == [i ^ 1]
