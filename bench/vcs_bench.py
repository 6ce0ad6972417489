"""mic VCS benchmark against git, in the same run, on a generated tree (default 100k files).

Measures (medians over --repeat runs): `mic status` vs `git status` with no change and with one changed file,
with the workspace watcher running (warm), as the first status that starts the watcher, and as a full scan
(`MIC_WATCH=off`); landing one changed file (`mic land`, watcher running) vs `git add -A && git commit`; objects
written per landing; and landings/s with 16 concurrent lander processes on the local store. Targets: status ≤ 1.0×
git, land ≤ 1.5× git with O(log n) objects, ≥ 50 landings/s.

    python bench/vcs_bench.py --files 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIC = [sys.executable, "-m", "mic"]


def _run(cmd: list[str] | str, cwd: Path, env: dict[str, str], shell: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, done.stdout


def generate(root: Path, files: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    words = [f"word{i}" for i in range(500)]
    for i in range(files):
        d = root / f"pkg{i // 1000:03d}" / f"mod{(i // 50) % 20:02d}"
        if i % 50 == 0:
            d.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choices(words, k=8)) for _ in range(rng.randint(2, 12))]
        (d / f"file{i:06d}.txt").write_text("\n".join(lines) + "\n")


def stop_watcher(workspace: Path) -> None:
    """Kill the workspace's watcher (started by this benchmark's `mic status`) by its PID and wait for it to go."""
    try:
        pid = int((workspace / ".mic" / "watch.pid").read_text())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


async def _lander(url: str, index: int, count: int, go: str) -> None:
    from mic.formats.btree_node import FileEntry
    from mic.landing import land, roll_forward
    from mic.objects import Project, content_hash
    from mic.objectstore import open_store
    from mic.session import start_session

    project = Project(open_store(url), os.environ.get("VCS_BENCH_PROJECT", "bench"))
    await project.read_head()
    while not os.path.exists(go):
        await asyncio.sleep(0.001)
    attempts = 0
    for k in range(count):
        data = f"lander {index} landing {k}\n".encode()
        path = f"landers/l{index:02d}/f{k:04d}.txt"
        tip, _ = await roll_forward(project)
        session = await start_session(project, f"lander {index} #{k}", tip.position, tip.hlc + 1)

        async def write_blobs(data: bytes = data) -> int:
            return (await project.put_content(data))[1]

        result = await land(project, session, {path: FileEntry(content_hash(data), len(data), 0)},
                            {path: "added"}, write_blobs, hlc=lambda t: t + 1)
        attempts += result.attempts
    print(attempts, flush=True)


def concurrent_landers(url: str, landers: int, per_lander: int, tmp: Path) -> tuple[float, float]:
    """Return (landings per second, landing attempts per landing) for `landers` processes."""
    go = tmp / "go"
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, str(i), str(per_lander), str(go)],
                              stdout=subprocess.PIPE, text=True)
             for i in range(landers)]
    time.sleep(3)
    start = time.perf_counter()
    go.touch()
    attempts = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit("a lander failed")
        attempts += int(out.split()[-1])
    elapsed = time.perf_counter() - start
    return landers * per_lander / elapsed, attempts / (landers * per_lander)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--landers", type=int, default=16)
    parser.add_argument("--landings-per-lander", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vcs-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIC_", "GIT_"))}
    env.update(MIC_STORE_URL=f"file://{tmp / 'store'}", HOME=str(tmp / "home"), GIT_AUTHOR_NAME="b",
               GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    (tmp / "home").mkdir()
    try:
        gdir, mdir = tmp / "git", tmp / "mic"
        t0 = time.perf_counter()
        generate(gdir, args.files)
        shutil.copytree(gdir, mdir)
        print(f"generated {args.files} files in {time.perf_counter() - t0:.1f}s under {tmp}")
        _run(["git", "init", "-q"], gdir, env)
        t_git_init, _ = _run("git add -A && git commit -q -m initial", gdir, env, shell=True)
        _run(MIC + ["init", "--project", "bench"], mdir, env)
        t_mic_init, out = _run(MIC + ["land", "initial", "--json"], mdir, env)
        print(f"initial commit: git {t_git_init:.2f}s, mic land {t_mic_init:.2f}s "
              f"({json.loads(out)['objects_written']} objects)")
        off = {**env, "MIC_WATCH": "off"}
        _run(["git", "status", "--porcelain"], gdir, env)  # warm both caches
        _run(MIC + ["status"], mdir, off)
        first = []
        for _ in range(args.repeat):  # the first status after the watcher is gone starts it
            stop_watcher(mdir)
            first.append(_run(MIC + ["status"], mdir, env)[0])
        _run(MIC + ["status"], mdir, env)

        def status_trio() -> tuple[float, float, float]:
            g = median([_run(["git", "status", "--porcelain"], gdir, env)[0] for _ in range(args.repeat)])
            m = median([_run(MIC + ["status"], mdir, env)[0] for _ in range(args.repeat)])
            full = median([_run(MIC + ["status"], mdir, off)[0] for _ in range(args.repeat)])
            return g, m, full

        g0, m0, f0 = status_trio()
        target = "pkg050/mod05/file050250.txt" if args.files > 50_250 else "pkg000/mod00/file000001.txt"
        for d in (gdir, mdir):
            with (d / target).open("a") as fh:
                fh.write("one more line\n")
        m1_first = _run(MIC + ["status"], mdir, env)[0]  # the one status that re-hashes the change
        g1, m1, f1 = status_trio()

        git_land, mic_land, objects = [], [], []
        rng = random.Random(1)
        for r in range(args.repeat):
            rel = f"pkg{rng.randrange(max(1, args.files // 1000)):03d}/mod00/file{rng.randrange(50):06d}.txt"
            rel = next((gdir / rel).parent.glob("*.txt")).relative_to(gdir).as_posix() if not (gdir / rel).exists() else rel
            for d in (gdir, mdir):
                with (d / rel).open("a") as fh:
                    fh.write(f"change {r}\n")
            git_land.append(_run("git add -A && git commit -q -m change", gdir, env, shell=True)[0])
            t, out = _run(MIC + ["land", f"change {r}", "--json"], mdir, env)
            mic_land.append(t)
            objects.append(json.loads(out)["objects_written"])
        startup = median([_run(MIC + ["--help"], mdir, env)[0] for _ in range(args.repeat)])
        rate, attempts = concurrent_landers(f"file://{tmp / 'store'}", args.landers, args.landings_per_lander, tmp)

        print(f"\n## mic vs git, {args.files} files, medians of {args.repeat}")
        print(f"{'measure':<38}{'git s':>9}{'mic s':>9}{'mic/git':>9}  target")
        rows = [("status, no change (watcher)", g0, m0, "<= 1.0"),
                ("status, one changed file (watcher)", g1, m1, "<= 1.0"),
                ("  first status after the change", g1, m1_first, ""),
                ("status that starts the watcher", g0, median(first), ""),
                ("status, no change (full scan)", g0, f0, ""), ("status, one changed (full scan)", g1, f1, ""),
                ("land one changed file (watcher)", median(git_land), median(mic_land), "<= 1.5")]
        for name, g, m, tgt in rows:
            print(f"{name:<38}{g:>9.3f}{m:>9.3f}{m / g:>9.2f}  {tgt}")
        print(f"mic CLI start-up alone (`mic --help`, included in every mic time above): {startup:.3f}s")
        print(f"objects written per landing (median): {median(objects):.0f}  (1 blob + tree path + landing,"
              " head, session)")
        print(f"landings/s, {args.landers} concurrent landers, local store: {rate:.1f}  (target >= 50; "
              f"{attempts:.2f} attempts per landing)")
        print(f"machine load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        stop_watcher(tmp / "mic")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, url, index, count, go = sys.argv
        asyncio.run(_lander(url, int(index), int(count), go))
    else:
        main()
