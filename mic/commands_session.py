"""`mic session …`: start a session, talk and decide inside it, list, inspect, abandon."""

from __future__ import annotations

from collections.abc import Callable

import click

from mic.cliutil import Env, command_options, emit, project_option
from mic.errors import WorkspaceError
from mic.formats.session import Decision, Message, Session
from mic.hlc import format_hlc
from mic.workspace import Workspace
from mickernel.errors import BadRequest

__all__ = ["session_group", "session_json"]


def session_json(s: Session) -> dict[str, object]:
    """The JSON form of a session record, used by `session status` and `show`."""
    return {
        "id": s.id, "goal": s.goal, "status": s.status, "base": s.base, "landed": s.landed or None,
        "started": format_hlc(s.hlc), "hlc": s.hlc,
        "conversation": [{"role": m.role, "text": m.text, "hlc": m.hlc, "time": format_hlc(m.hlc)}
                         for m in s.messages],
        "decisions": [{"what": d.what, "why": d.why, "alternatives": list(d.alternatives), "hlc": d.hlc}
                      for d in s.decisions],
        "changes": [{"path": c.path, "kind": c.kind} for c in s.changes],
    }


def print_session(s: Session) -> None:
    """Human rendering: goal, conversation, decisions, changes."""
    click.echo(f"session {s.id}  [{s.status}]" + (f" landed @{s.landed}" if s.landed else "") + f"  base @{s.base}")
    click.echo(f"goal: {s.goal}")
    click.echo(f"started: {format_hlc(s.hlc)}")
    if s.messages:
        click.echo("conversation:")
        for m in s.messages:
            click.echo(f"  [{format_hlc(m.hlc)}] {m.role}: {m.text}")
    if s.decisions:
        click.echo("decisions:")
        for d in s.decisions:
            click.echo(f"  - {d.what}\n    why: {d.why}")
            for alt in d.alternatives:
                click.echo(f"    alternative considered: {alt}")
    if s.changes:
        click.echo("changes:")
        for c in s.changes:
            click.echo(f"  {c.kind[0].upper()} {c.path}")


def _active(ws: Workspace) -> str:
    if not ws.state.session:
        raise WorkspaceError("no active session in this workspace: run `mic session start \"goal\"` first")
    return ws.state.session


async def _update_active(env: Env, change: Callable[[Session, int], Session]) -> Session:
    """Apply `change(session, stamp)` to the active session (stamp: a fresh clock tick); save the clock.

    Under the workspace lock, with the state as it is then: a note during a `mic land` waits for it (and then
    finds no active session) instead of writing back the pre-land base and session."""
    from mic.session import update_session

    ws = env.workspace()
    with ws.locked():
        stamp = ws.clock.tick()
        session = await update_session(env.project(ws.state.project), _active(ws), lambda s: change(s, stamp))
        ws.save_state()  # only the clock moved
    return session


@click.group("session")
def session_group() -> None:
    """Sessions record why work is done: goal, conversation, decisions."""


@session_group.command("start")
@click.argument("goal")
@command_options
async def start(env: Env, goal: str) -> None:
    """Start a session with GOAL in this workspace."""
    if not goal.strip():
        raise BadRequest("the goal must not be empty")
    from mic.session import start_session

    ws = env.workspace()
    with ws.locked():
        if ws.state.session:
            raise WorkspaceError(f"session {ws.state.session} is already active: land or abandon it first")
        session = await start_session(env.project(ws.state.project), goal, ws.state.base, ws.clock.tick())
        ws.state.session = session.id
        ws.save_state()
    emit(env, session_json(session), f"started session {session.id}: {goal}")


@session_group.command("status")
@command_options
async def status(env: Env) -> None:
    """Show the active session."""
    from mic.session import load_session

    ws = env.workspace()
    session, _ = await load_session(env.project(), _active(ws))
    emit(env, session_json(session), lambda: print_session(session))


@session_group.command("list")
@project_option
@command_options
async def list_cmd(env: Env) -> None:
    """List the project's sessions (active, landed, abandoned)."""
    from mic.session import list_sessions

    sessions = await list_sessions(env.project())

    def human() -> None:
        for s in sessions:
            where = f"@{s.landed}" if s.landed else ""
            click.echo(f"{s.id}  {s.status:<9} {where:>6}  {s.goal.splitlines()[0] if s.goal else ''}")

    emit(env, {"sessions": [{"id": s.id, "status": s.status, "goal": s.goal, "landed": s.landed or None,
                             "base": s.base} for s in sessions]}, human)


@session_group.command("note")
@click.argument("message")
@click.option("--role", type=click.Choice(["human", "agent"]), default="agent", show_default=True)
@command_options
async def note(env: Env, message: str, role: str) -> None:
    """Add MESSAGE to the active session's conversation."""
    session = await _update_active(
        env, lambda s, stamp: s.with_(messages=(*s.messages, Message(role, stamp, message)))
    )
    emit(env, session_json(session), f"noted ({role}) in session {session.id}")


@session_group.command("decide")
@click.argument("what")
@click.option("--why", required=True, help="The reason for the decision.")
@click.option("--alternative", "alternatives", multiple=True, help="An alternative considered (repeatable).")
@command_options
async def decide(env: Env, what: str, why: str, alternatives: tuple[str, ...]) -> None:
    """Record a decision WHAT, why it was taken, and the alternatives considered."""
    if not what.strip() or not why.strip():
        raise BadRequest("a decision needs a non-empty WHAT and --why")
    session = await _update_active(
        env, lambda s, stamp: s.with_(decisions=(*s.decisions, Decision(stamp, what, why, alternatives)))
    )
    emit(env, session_json(session), f"recorded decision in session {session.id}: {what}")


@session_group.command("abandon")
@command_options
async def abandon(env: Env) -> None:
    """Abandon the active session (workspace files are left as they are)."""
    from mic.session import update_session

    ws = env.workspace()

    def mark(s: Session) -> Session:
        if s.status != "active":
            raise WorkspaceError(f"session {s.id} is already {s.status}")
        return s.with_(status="abandoned")

    with ws.locked():
        session = await update_session(env.project(ws.state.project), _active(ws), mark)
        ws.state.session = None
        ws.save_state()
    emit(env, session_json(session), f"abandoned session {session.id}")


def register(group: click.Group) -> None:
    """Attach this module's commands to the root `mic` group."""
    for command in (session_group,):
        group.add_command(command)
