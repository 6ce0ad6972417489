"""The errors only the VCS raises, under the root both halves share, `mickernel.errors.MicError`.

Every error a user can trigger is a `MicError`; the CLI maps them to exit codes in one place.
"""

from __future__ import annotations

from mickernel.errors import IntegrityError, MicError

__all__ = ["Conflict", "LostLanding", "PreconditionFailed", "StoreUnavailable", "WorkspaceError"]


class Conflict(MicError):
    """A landing conflicts with landings since the session's base, or lost a compare-and-swap race."""

    def __init__(self, message: str, *, paths: tuple[str, ...] = (), sessions: tuple[str, ...] = ()) -> None:
        self.paths = paths
        self.sessions = sessions
        super().__init__(message)


class PreconditionFailed(MicError):
    """A conditional write lost: the key already existed (create-only) or its ETag moved (compare-and-swap)."""

    def __init__(self, key: str, condition: str) -> None:
        self.key = key
        self.condition = condition
        super().__init__(f"precondition failed on {key!r}: {condition}")


class StoreUnavailable(MicError):
    """The object store cannot be reached or used; the message says exactly what to set or create."""


class WorkspaceError(MicError):
    """The current directory is not a usable mic workspace (or the workspace state is inconsistent)."""


class LostLanding(IntegrityError):
    """A landing record at or below the tip is missing: the store lost data.

    Landing records are never deleted, and a conflict check that skipped a lost one could miss a conflict, so
    landing stops instead."""

    def __init__(self, position: int) -> None:
        self.expected, self.got, self.what = f"landing/{position}", "nothing", "landing record"
        MicError.__init__(
            self,
            f"landing record landing/{position} is missing though later landings exist: the store lost data, and "
            "conflicts cannot be checked without it; restore it (e.g. from a backup) before landing",
        )
