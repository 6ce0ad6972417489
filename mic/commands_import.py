"""`mic import git <repo>`: bring a git history in, one landed session per commit, with a progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mic.cliutil import Env, command_options, emit, project_option
from mic.hlc import Clock
from mickernel.errors import BadRequest

__all__ = ["import_group"]


@click.group("import")
def import_group() -> None:
    """Import history from another version-control system."""


@import_group.command("git")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rev", default="HEAD", show_default=True, help="The commit whose first-parent history to import.")
@project_option
@command_options
async def import_git_cmd(env: Env, repo: Path, rev: str) -> None:
    """Import REPO's first-parent history into an empty project: each commit lands as a session (goal = message).

    Submodules have no content here and are skipped (counted in the output)."""
    from mic.gitimport import GitCommit, import_git, read_history, require_empty

    project = env.project()
    await project.read_head()  # fail early, with the standard message, if the project does not exist
    await require_empty(project)  # before the progress bar; import_git checks again
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise BadRequest("not a git repository", str(repo))
    total = len(read_history(repo, rev))
    if env.as_json or not sys.stderr.isatty():
        result = await import_git(project, repo, clock=Clock(), rev=rev)
    else:
        with click.progressbar(length=total, label="importing commits", file=sys.stderr) as bar:

            def step(_commit: GitCommit) -> None:
                bar.update(1)

            result = await import_git(project, repo, clock=Clock(), progress=step, rev=rev)
    emit(env, {"project": project.name, "commits": result.commits, "first": result.first_position,
               "last": result.last_position, "skipped_submodules": result.skipped_submodules},
         f"imported {result.commits} commit(s) into {project.name} as @{result.first_position}..@{result.last_position}"
         + (f" ({result.skipped_submodules} submodule entries skipped)" if result.skipped_submodules else ""))


def register(group: click.Group) -> None:
    """Attach this module's commands to the root `mic` group."""
    for command in (import_group,):
        group.add_command(command)
