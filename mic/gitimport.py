"""Import a git repository's first-parent history: each commit becomes one landed session (goal = message).

Uses git's own plumbing through subprocesses (`git log -z`, `git diff-tree -r -z`, `git cat-file --batch`), so
no git library is needed and every object git can read, mic can import. Submodule entries (mode 160000) have no
content in this repository and are skipped (counted in the result): mic never holds a file at a submodule's path.

The project must be empty (tip @0): each landing then holds exactly its commit's tree.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mic.formats.btree_node import FileEntry
from mic.formats.session import Session
from mic.hlc import Clock
from mic.landing import land, roll_forward
from mic.objects import Project, content_hash
from mic.paths import path_problem, show_path
from mic.session import new_session_id
from mickernel.errors import BadRequest, MicError

__all__ = ["GitCommit", "ImportResult", "import_git", "read_history", "require_empty"]

_MODES = {"100644": 0, "100664": 0, "100755": 1, "120000": 2}
_SUBMODULE = "160000"


@dataclass(frozen=True)
class GitCommit:
    sha: str
    message: str


@dataclass(frozen=True)
class ImportResult:
    commits: int
    first_position: int
    last_position: int
    skipped_submodules: int


def _git(repo: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise MicError("`git` is not installed or not on PATH; it is needed to import a git repository") from exc
    if done.returncode != 0:
        raise BadRequest(f"git {' '.join(args[:2])} failed in {repo}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def read_history(repo: Path, rev: str = "HEAD") -> list[GitCommit]:
    """First-parent commits of `rev`, oldest first."""
    _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    raw = _git(repo, "log", "--first-parent", "--reverse", "-z", "--format=%H%n%B", rev)
    commits = []
    for record in raw.split(b"\0"):
        if not record.strip():
            continue
        sha, _, message = record.decode(errors="replace").partition("\n")
        commits.append(GitCommit(sha.strip(), message.strip() or "(no commit message)"))
    return commits


def _changes(repo: Path, parent: str | None, sha: str) -> tuple[list[tuple[str, str, str, str]], int]:
    """(path, kind, mode, blob sha) for each changed path, and the number of submodule entries skipped.

    A submodule (mode 160000) is never in mic's tree, so git's type changes are mapped onto what mic holds:
    a file that becomes a submodule is deleted, a submodule that becomes a file is added, and a submodule's own
    additions, updates and deletions are skipped (mic never had the path).
    """
    args = ["diff-tree", "-r", "-z", "--no-renames", "--no-commit-id"]
    raw = _git(repo, *args, parent, sha) if parent else _git(repo, *args, "--root", sha)
    fields = raw.split(b"\0")
    out, skipped, i = [], 0, 0
    while i + 1 < len(fields) and fields[i]:
        meta, path = fields[i].decode().lstrip(":").split(" "), fields[i + 1].decode("utf-8", "surrogateescape")
        i += 2
        old_mode, new_mode, _old_sha, new_sha, status = meta
        had_file = old_mode in _MODES  # "000000" for an addition, "160000" for a submodule
        if _SUBMODULE in (old_mode, new_mode):
            skipped += 1
        if status.startswith("D") or new_mode not in _MODES:
            if had_file:
                out.append((path, "deleted", "", ""))
            elif new_mode != _SUBMODULE and old_mode != _SUBMODULE:
                raise MicError(f"git diff-tree gave an entry mic cannot import: {fields[i - 2].decode()!r}")
        else:
            out.append((path, "modified" if had_file else "added", new_mode, new_sha))
    return out, skipped


class _CatFile:
    """One long-lived `git cat-file --batch` process."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            ["git", "-C", str(repo), "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def read(self, sha: str) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(sha.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            raise MicError(f"git cat-file could not read blob {sha}: {b' '.join(header).decode()}")
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)
        return data

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


async def require_empty(project: Project) -> None:
    """Refuse a project that has landings: an import lands each commit as a diff, which only reproduces git's
    trees when applied from an empty tree."""
    tip, _ = await roll_forward(project)
    if tip.position != 0:
        raise BadRequest(
            f"project {project.name} is not empty (tip @{tip.position}); `mic import git` needs an empty project "
            f"so that every landing equals its commit: import into a new one (`mic project create <name>`)"
        )


async def import_git(
    project: Project, repo: Path, *, clock: Clock, progress: Callable[[GitCommit], None] | None = None,
    rev: str = "HEAD",
) -> ImportResult:
    """Land each first-parent commit of `repo` as one session on `project`, oldest first.

    Raises:
        BadRequest: the project already has landings. Each commit is applied as its diff against the previous
            one, so on top of other content the landed trees would silently differ from git's; replacing or
            merging the project's content is not what an import should decide, so it refuses instead.
    """
    await require_empty(project)
    commits = await asyncio.to_thread(read_history, repo, rev)
    if not commits:
        raise BadRequest(f"{repo} has no commits to import")
    cat = await asyncio.to_thread(_CatFile, repo)
    parent: str | None = None
    first = last = 0
    skipped_total = 0
    try:
        for commit in commits:
            listed, skipped = await asyncio.to_thread(_changes, repo, parent, commit.sha)
            for path, *_ in listed:  # the rule checkout and the scan follow: refuse before this commit writes
                if (problem := path_problem(path)) is not None:
                    raise BadRequest(
                        f"cannot import commit {commit.sha[:12]} of {repo}: path {show_path(path)}: {problem}"
                        + (f"; commits up to @{last} were imported" if last else "; nothing was imported")
                    )
            skipped_total += skipped
            parent = commit.sha
            if not listed:
                if progress:
                    progress(commit)
                continue
            contents = {p: await asyncio.to_thread(cat.read, s) for p, kind, _m, s in listed if kind != "deleted"}
            changes: dict[str, FileEntry | None] = {
                p: None if kind == "deleted" else FileEntry(content_hash(contents[p]), len(contents[p]), _MODES[m])
                for p, kind, m, _s in listed
            }
            kinds = {p: kind for p, kind, _m, _s in listed}

            async def write_blobs(contents: dict[str, bytes] = contents) -> int:
                return sum([(await project.put_content(data))[1] for data in contents.values()])

            tip, _ = await roll_forward(project)
            clock.observe(tip.hlc)
            # based on the previous imported landing, so a concurrent landing on these paths is a conflict
            session = Session(new_session_id(), commit.message, last, clock.tick())

            def stamp(tip_hlc: int) -> int:
                clock.observe(tip_hlc)
                return clock.tick()

            result = await land(project, session, changes, kinds, write_blobs, hlc=stamp)
            first = first or result.landing.position
            last = result.landing.position
            if progress:
                progress(commit)
    finally:
        await asyncio.to_thread(cat.close)
    return ImportResult(len(commits), first, last, skipped_total)
