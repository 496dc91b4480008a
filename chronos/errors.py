"""Every Chronos exception.

ChronosError                 the base; `exit_code` is what the CLI exits with
├── UsageError               a bad argument or option (2)
├── InputError               an input that cannot be read at all (2)
├── DatabaseError            the database cannot be used (2)
│   ├── NotMigrated          missing, behind or ahead of this version's schema
│   ├── DatabaseBusy         still locked after the busy timeout
│   └── DatabaseFull         the disk or a size limit is full
├── NotFound                 no such event (1)
└── GuardFailed              a guarded transition matched fewer rows than expected

HandlerError                 raised by handlers, never by Chronos itself
├── RetryableError           worth another attempt after a backoff
└── TerminalError            never worth another attempt
"""

from __future__ import annotations


class ChronosError(Exception):
    """Chronos failed."""

    exit_code = 2

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(ChronosError):
    """Bad usage."""


class InputError(ChronosError):
    """The input cannot be read."""


class DatabaseError(ChronosError):
    """The database cannot be used."""


class NotMigrated(DatabaseError):
    """The database is not at this version's schema; run `chronos migrate`."""


class DatabaseBusy(DatabaseError):
    """The database stayed locked by another process beyond the busy timeout."""


class DatabaseFull(DatabaseError):
    """The disk is full or the database reached a size limit; nothing was lost."""


class NotFound(ChronosError):
    """Not found."""

    exit_code = 1


class GuardFailed(ChronosError):
    """A guarded state change found the event in another state or owned by another worker."""

    exit_code = 1


class HandlerError(Exception):
    """A handler failed."""


class RetryableError(HandlerError):
    """A handler failure worth retrying after a backoff."""


class TerminalError(HandlerError):
    """A handler failure that no retry can fix."""
