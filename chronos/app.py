"""The library API: `Chronos` owns the engine and offers every command as a method."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Engine

from chronos import bench, check, db, demo, errors, ingestion, inspection, migrate
from chronos import purge as purging
from chronos import replay as replaying
from chronos.handlers import DEFAULT_HANDLER, Handler, load_handler
from chronos.ingestion import DEFAULT_MAX_EVENT_BYTES, IngestReport, Progress
from chronos.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy
from chronos.runner import DEFAULT_BATCH, Worker
from chronos.states import TERMINAL, State
from chronos.validation import Invalid, parse_duration, parse_since


class Chronos:
    """A Chronos database.

    Args:
        url: a SQLAlchemy URL or a bare SQLite path; default `CHRONOS_DB`, then
            `sqlite:///chronos.db`.
        synchronous: SQLite's durability, FULL (an accepted event survives power loss)
            or NORMAL (faster; the last commits before a power loss may be lost).
        clock: where "now" comes from; tests and the simulation pass their own.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in db.SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(db.SYNCHRONOUS)}")
        self.url = db.resolve_url(url)
        self.synchronous = synchronous
        self.clock = clock
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine of a database at this version's schema.

        Raises:
            NotMigrated: the database is missing or not at head.
        """
        if self._engine is None:
            engine = db.create_engine(self.url, synchronous=self.synchronous)
            try:
                migrate.require_current(engine)
            except BaseException:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    def describe(self) -> str:
        """Name the database for messages."""
        return db.describe(self.url)

    def migrate(self) -> str:
        """Create or upgrade the schema; idempotent. Return the revision now in place."""
        engine = db.create_engine(self.url, synchronous=self.synchronous, must_exist=False)
        try:
            with db.translated(f"migrating {self.describe()}"):
                return migrate.upgrade(engine)
        finally:
            engine.dispose()

    def ingest(
        self,
        path: str,
        *,
        source: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        rejects: str | None = None,
        batch: int = ingestion.DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Accept the JSON Lines of `path` (`-` for stdin, `.gz` allowed)."""
        return ingestion.Ingest(
            self.engine,
            path,
            source=source,
            max_event_bytes=max_event_bytes,
            rejects=rejects,
            batch=batch,
            progress=progress,
            clock=self.clock,
        ).run()

    def worker(
        self,
        handler: Handler | str = DEFAULT_HANDLER,
        *,
        name: str | None = None,
        batch: int = DEFAULT_BATCH,
        lease: float = 30.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = 1.0,
        idle_max: float = 2.0,
    ) -> Worker:
        """Build a worker; call `.run()` on it, or `.run_once()` to step it.

        Args:
            handler: a callable or a `module:function` string.
            backoff: seconds before the first retry; each later retry waits twice as long.
        """
        if isinstance(handler, str):
            handler = load_handler(handler)
        return Worker(
            self.engine,
            handler,
            name=name,
            batch=batch,
            lease=lease,
            policy=RetryPolicy(max_attempts=max_attempts, base=backoff, cap=max(300.0, backoff)),
            idle_max=idle_max,
            clock=self.clock,
        )

    def demo(self, *, workers: int = 2) -> dict[str, Any]:
        """Migrate, ingest the bundled sample, drain it with worker processes, report."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        # The demo handler fails events on purpose: never let it near a real queue.
        path = db.sqlite_path(self.url)
        if path is not None and os.path.exists(path):
            raise errors.UsageError(f"the demo needs a new database, and {path} exists")
        revision = self.migrate()
        if self.stats()["total"]:
            raise errors.UsageError(
                f"the demo needs an empty database; {self.describe()} has events"
            )
        report = self.ingest(demo.sample_path())
        demo.run_workers(self.url, workers=workers)
        with db.translated("reading the outcome"), self._read() as conn:
            stats = inspection.queue_stats(conn, now=self.clock())
            examples = inspection.examples(conn)
        return {
            "database": self.describe(),
            "revision": revision,
            "lines": report.lines,
            "accepted": report.accepted,
            "duplicates": report.duplicates,
            "rejected": report.rejected,
            "rejections": [r.__dict__ for r in report.rejections],
            "processed": stats["counts"]["PROCESSED"],
            "failed_terminal": stats["counts"]["FAILED_TERMINAL"],
            "unfinished": stats["total"]
            - stats["counts"]["PROCESSED"]
            - stats["counts"]["FAILED_TERMINAL"],
            "examples": examples,
        }

    def bench(
        self,
        kind: str,
        *,
        events: int | None = None,
        repeat: int = 3,
        workers: Sequence[int] | str = (1, 2, 4),
        handler: str = "both",
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Measure `ingest` or `drain` on fresh temporary databases, with baselines.

        It never touches this database; only `synchronous` carries over. See `chronos.bench`.
        """
        return bench.run(
            kind,
            events=events,
            repeat=repeat,
            workers=workers,
            handler=handler,
            synchronous=self.synchronous,
            progress=progress,
        )

    def inspect(self, event_id: int) -> dict[str, Any]:
        """Return one event with its state, result, replay links and history."""
        with db.translated("reading the event"), self._read() as conn:
            return inspection.event_detail(conn, event_id)

    def stats(self) -> dict[str, Any]:
        """Return counts by state, backlog, oldest waiting event and throughput."""
        with db.translated("reading the queue"), self._read() as conn:
            return inspection.queue_stats(conn, now=self.clock())

    def check(self) -> check.CheckReport:
        """Audit the whole database in one consistent snapshot; never writes."""
        with db.translated("checking the database"), self._read(snapshot=True) as conn:
            return check.audit(conn, now=self.clock())

    def replay(
        self,
        ids: Sequence[int] = (),
        *,
        state: State = State.FAILED_TERMINAL,
        source: str | None = None,
        since: str | None = None,
        force: bool = False,
    ) -> replaying.ReplayReport:
        """Re-ingest terminal events, by id or by filters, as new linked events.

        Args:
            ids: originals to replay; when empty, every event matching the filters.
            state: which terminal state the filters select (FAILED_TERMINAL by default).
            since: only events that reached it since this RFC 3339 time or duration (`12h`).
            force: replay originals that were replayed before.
        """
        if state not in TERMINAL:
            raise ValueError(f"only terminal events can be replayed, not {state}")
        if not ids and source is None and since is None and state is not State.FAILED_TERMINAL:
            raise ValueError("name event ids, or filter with --source/--since")
        now = self.clock()
        cutoff = self._since(since, now)
        with db.translated("replaying"), self.engine.begin() as conn:
            originals = replaying.select_originals(
                conn, ids=ids, state=state, source=source, since=cutoff
            )
            return replaying.replay(conn, originals, force=force, now=now)

    def purge(
        self,
        older_than: str,
        *,
        states: Sequence[State] = tuple(sorted(TERMINAL)),
        dry_run: bool = False,
        vacuum: bool = False,
        batch: int = 5000,
    ) -> purging.PurgeReport:
        """Remove terminal events last changed longer ago than `older_than` (`30d`).

        Their history and storage rows go with them, in batches of `batch` events,
        each its own transaction. Non-terminal events are never touched.
        """
        try:
            age = parse_duration(older_than)
        except Invalid as exc:
            raise ValueError(f"--older-than: {exc}") from None
        purging.check_states(states)
        before = self.clock() - age
        if dry_run:
            with db.translated("planning the purge"), self._read(snapshot=True) as conn:
                return purging.plan(conn, states=states, before=before)
        report = purging.PurgeReport(dry_run=False, before=before)
        while True:
            with db.translated("purging"), self.engine.begin() as conn:
                if not purging.purge_batch(conn, report, states=states, batch=batch):
                    break
        if vacuum:
            with db.translated("vacuuming"):
                db.vacuum(self.engine)
            report.vacuumed = True
        return report

    @staticmethod
    def _since(since: str | None, now: float) -> float | None:
        if since is None:
            return None
        try:
            return parse_since(since, now=now)
        except Invalid as exc:
            raise ValueError(f"--since: {exc}") from None

    def _read(self, *, snapshot: bool = False) -> Any:
        conn = self.engine.connect().execution_options(**db.READ_ONLY)
        if snapshot and conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Chronos:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
