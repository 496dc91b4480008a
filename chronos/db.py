"""The engine, and the only code that touches the DB-API connection.

It sets SQLite's pragmas and `BEGIN IMMEDIATE`, checks the SQLite version once,
translates driver errors into Chronos errors, and holds the one helper every owner
module uses for a guarded state change.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from chronos import errors
from chronos.schema import events
from chronos.states import TRANSITIONS, State

DEFAULT_URL = "sqlite:///chronos.db"
MIN_SQLITE = (3, 35, 0)  # RETURNING
BUSY_TIMEOUT_MS = 30_000
SYNCHRONOUS = ("FULL", "NORMAL")

#: Execution option that makes a SQLite transaction start as a plain (read) BEGIN.
READ_ONLY = {"chronos_read_only": True}


def resolve_url(url: str | None) -> str:
    """Turn `--db`, `CHRONOS_DB` or the default into a SQLAlchemy URL.

    A bare file path means SQLite; `postgresql://` means the psycopg 3 driver.
    """
    url = url or os.environ.get("CHRONOS_DB") or DEFAULT_URL
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> str | None:
    """Return the file path of a SQLite URL, None for other databases or memory."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.query.get("uri") == "true" and parsed.database.startswith("file:"):
        # A SQLite URI filename, `sqlite:///file:PATH?mode=ro&uri=true`: the file is PATH.
        return urllib.parse.unquote(urllib.parse.urlsplit(parsed.database).path) or None
    return parsed.database


def describe(url: str) -> str:
    """Name the database for messages, without any password."""
    path = sqlite_path(url)
    return path if path else sa.engine.make_url(url).render_as_string(hide_password=True)


def create_engine(url: str, *, synchronous: str = "FULL", must_exist: bool = True) -> Engine:
    """Build the engine for `url`.

    Args:
        url: a SQLAlchemy URL as given by `resolve_url`.
        synchronous: SQLite's `synchronous` pragma, FULL (default) or NORMAL.
        must_exist: refuse a SQLite file that does not exist yet instead of creating it.

    Raises:
        NotMigrated: the SQLite file does not exist and `must_exist` is set.
        DatabaseError: the directory is missing or the driver is not installed.
    """
    if synchronous not in SYNCHRONOUS:
        raise errors.UsageError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not os.path.exists(path):
            raise errors.NotMigrated(f"no database at {path}; run `chronos migrate` to create it")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise errors.DatabaseError(f"cannot create database {path}: no folder {folder}")
        _check_sqlite_version()
    try:
        engine = sa.create_engine(url)
    except (ImportError, sa.exc.ArgumentError) as exc:
        raise errors.DatabaseError(f"cannot use database URL {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, synchronous)
    return engine


def _check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise errors.DatabaseError(
            f"SQLite {sqlite3.sqlite_version} is too old; Chronos needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer"
        )


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module (SQLAlchemy's recipe),
        # so that the begin hook below decides how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that reads and
        # then writes can fail with SQLITE_BUSY without waiting on the busy timeout.
        if conn.get_execution_options().get("chronos_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn driver errors raised inside the block into Chronos errors."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise translate(exc, what) from exc


def translate(exc: sa.exc.DBAPIError, what: str) -> errors.ChronosError:
    """Return the Chronos error for a driver error met while doing `what`."""
    message = str(exc.orig).strip() if exc.orig is not None else str(exc)
    lowered = message.lower()
    if "database is locked" in lowered or "database is busy" in lowered:
        return errors.DatabaseBusy(
            f"{what}: the database stayed locked for {BUSY_TIMEOUT_MS // 1000} s"
        )
    if "disk is full" in lowered or "no space left" in lowered or "disk i/o error" in lowered:
        # SQLite reports ENOSPC as "database or disk is full" but EFBIG (a file-size
        # limit or quota) as "disk I/O error" (SQLITE_IOERR_WRITE): name both causes.
        return errors.DatabaseFull(
            f"{what}: cannot write: the disk or a file-size limit is full, or the disk "
            f"failed ({message}); nothing accepted was lost"
        )
    if "readonly database" in lowered or "read-only" in lowered:
        return errors.DatabaseError(f"{what}: the database is read-only ({message})")
    if "file is not a database" in lowered:
        return errors.DatabaseError(f"{what}: the file is not a Chronos database ({message})")
    if "unable to open database file" in lowered:
        return errors.DatabaseError(f"{what}: cannot open the database file ({message})")
    if "chronos:" in lowered:
        return errors.GuardFailed(f"{what}: the database refused it: {message}")
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return errors.DatabaseError(f"{what}: {message}")
    return errors.ChronosError(f"{what}: {message}")


def vacuum(engine: Engine) -> None:
    """Return free pages to the file system (SQLite) or refresh statistics (PostgreSQL).

    VACUUM cannot run inside a transaction, so this uses the DB-API connection
    in autocommit mode.
    """
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "postgresql":
            raw.driver_connection.autocommit = True  # type: ignore[union-attr]
            for table in ("processed_events", "event_transitions", "events"):
                raw.driver_connection.execute(f"VACUUM ANALYZE {table}")  # type: ignore[union-attr]
            raw.driver_connection.autocommit = False  # type: ignore[union-attr]
        else:
            cursor = raw.cursor()
            cursor.execute("VACUUM")
            cursor.close()
    finally:
        raw.close()


def transition_matching(
    conn: Connection,
    ids: Sequence[int],
    source: State,
    target: State,
    *,
    owner: str,
    actor: str,
    now: float,
    note: str | None = None,
    lease_owner: str | None = None,
    values: dict[str, Any] | None = None,
) -> list[int]:
    """Move `ids` from `source` to `target` with one guarded UPDATE; return those moved.

    The statement matches only rows still in `source` (and still leased to
    `lease_owner` when given); the history row is written by the database trigger.
    An id missing from the result failed its guard: the caller must say so.

    Raises:
        ValueError: the transition is illegal or not owned by `owner`.
    """
    if TRANSITIONS.get((source, target)) != owner:
        raise ValueError(f"{owner} does not own {source} -> {target}")
    if not ids:
        return []
    where = [events.c.id.in_(ids), events.c.state == source.value]
    if lease_owner is not None:
        where.append(events.c.lease_owner == lease_owner)
    stmt = (
        sa.update(events)
        .where(*where)
        .values(state=target.value, actor=actor, note=note, updated_at=now, **(values or {}))
        .returning(events.c.id)
    )
    return list(conn.execute(stmt).scalars())


def transition(
    conn: Connection,
    ids: Sequence[int],
    source: State,
    target: State,
    *,
    owner: str,
    actor: str,
    now: float,
    note: str | None = None,
    lease_owner: str | None = None,
    values: dict[str, Any] | None = None,
) -> None:
    """Like `transition_matching`, for callers to whom any miss is an error.

    Raises:
        ValueError: the transition is illegal or not owned by `owner`.
        GuardFailed: fewer rows matched than `ids` names.
    """
    matched = transition_matching(
        conn,
        ids,
        source,
        target,
        owner=owner,
        actor=actor,
        now=now,
        note=note,
        lease_owner=lease_owner,
        values=values,
    )
    if len(matched) != len(ids):
        raise errors.GuardFailed(
            f"{source} -> {target} by {actor}: {len(matched)} of {len(ids)} events "
            "matched the guard"
        )
