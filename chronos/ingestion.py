"""Ingestion: owns RECEIVED -> ACCEPTED, the acceptance boundary.

A batch of lines is inserted as RECEIVED, accepted and handed to the buffer in one
transaction, together with a checkpoint of how far the input was read and a hash of
everything before that point. A re-run of an interrupted ingest of the same file
checks that hash and resumes after the checkpoint, so every line ends accepted
exactly once or rejected, with or without producer ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from chronos import buffer, errors
from chronos.db import transition, translated
from chronos.schema import events, ingest_runs
from chronos.states import INGESTION, INITIAL, State
from chronos.validation import Candidate, Invalid, Rejection, parse_line

ACTOR = "ingestion"
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
DEFAULT_BATCH = 2000
_CHUNK = 1024 * 1024
_REJECT_RAW_CHARS = 4096

Progress = Callable[[int, int], None]  # (bytes read, lines read)


@dataclass
class IngestReport:
    """What one `ingest` call did; the `total_*` counts span every resumed run."""

    input: str
    run_id: int
    resumed_at_line: int = 0
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    blank: int = 0
    held_tail_bytes: int = 0  # an unfinished last line, left for the next run
    total_accepted: int = 0
    total_duplicates: int = 0
    total_rejected: int = 0
    seconds: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        data = {k: v for k, v in self.__dict__.items() if k != "rejections"}
        data["resumed"] = self.resumed_at_line > 0
        return data


@dataclass
class _Line:
    line_no: int
    raw: bytes
    end_offset: int
    too_large: bool = False


class _Reader:
    """Reads lines with their byte offsets and a running hash, in constant memory.

    With `hold_tail`, a last line that has no newline and is not complete JSON is
    left unread: a producer may still be writing it, and the next run of the same
    file resumes before it instead of rejecting half a line.
    """

    def __init__(self, stream: BinaryIO, max_bytes: int, *, hold_tail: bool = False) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self.hold_tail = hold_tail
        self.offset = 0
        self.line_no = 0
        self.held_tail = 0  # bytes of an unfinished last line left for the next run
        self.sha = hashlib.sha256()

    def _read(self, limit: int) -> bytes:
        data = self.stream.readline(limit)
        self.sha.update(data)
        self.offset += len(data)
        return data

    def skip(self, nbytes: int, lines: int) -> None:
        """Consume the first `nbytes` bytes, known to hold `lines` lines."""
        remaining = nbytes
        while remaining:
            data = self.stream.read(min(_CHUNK, remaining))
            if not data:
                break
            self.sha.update(data)
            self.offset += len(data)
            remaining -= len(data)
        self.line_no = lines

    def __iter__(self) -> Iterator[_Line]:
        limit = self.max_bytes + 2  # room for CRLF after a maximal line
        while True:
            raw = self.stream.readline(limit)
            if not raw:
                return
            if self.hold_tail and len(raw) < limit and not raw.endswith(b"\n"):
                if not _complete(raw):
                    self.held_tail = len(raw)
                    return
            self.sha.update(raw)
            self.offset += len(raw)
            self.line_no += 1
            too_large = False
            if not raw.endswith(b"\n") and len(raw) > self.max_bytes:
                too_large = True
                while True:  # drop the rest of the line without holding it
                    rest = self._read(_CHUNK)
                    if not rest or rest.endswith(b"\n"):
                        break
            yield _Line(self.line_no, raw, self.offset, too_large)


def _complete(tail: bytes) -> bool:
    """Tell whether an unterminated last line is whole: blank, or one JSON value."""
    if not tail.strip():
        return True
    try:
        json.loads(tail)
    except (ValueError, RecursionError):
        return False
    return True


def open_input(path: str) -> tuple[BinaryIO, str, int | None]:
    """Open FILE, FILE.gz or `-`; return the stream, its identity and its size."""
    if path == "-":
        return sys.stdin.buffer, "-", None
    try:
        if path.endswith(".gz"):
            stream: BinaryIO = gzip.GzipFile(filename=path, mode="rb")  # type: ignore[assignment]
        else:
            stream = open(path, "rb")  # closed by the caller
        size = os.stat(path).st_size
    except OSError as exc:
        raise errors.InputError(f"cannot read {path}: {exc.strerror}") from exc
    return stream, os.path.abspath(path), size


def _classify(line: _Line, *, default_source: str, max_bytes: int) -> Candidate | Rejection | None:
    if line.too_large or len(line.raw.rstrip(b"\r\n")) > max_bytes:
        preview = line.raw[:_REJECT_RAW_CHARS].decode("utf-8", "replace")
        return Rejection(line.line_no, f"line is larger than {max_bytes} bytes", preview)
    try:
        text = line.raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = line.raw[:_REJECT_RAW_CHARS].decode("utf-8", "replace").rstrip("\r\n")
        return Rejection(line.line_no, f"not valid UTF-8 at byte {exc.start + 1}", raw)
    text = text.strip()
    if not text:
        return None
    try:
        return parse_line(text, line.line_no, default_source=default_source)
    except Invalid as exc:
        return Rejection(line.line_no, str(exc), text[:_REJECT_RAW_CHARS])


def _latest_run(conn: Connection, identity: str) -> sa.Row[tuple[object, ...]] | None:
    return conn.execute(
        sa.select(ingest_runs)
        # A run that committed nothing (an empty file, a failure at once) must not
        # hide an earlier run of the same file.
        .where(ingest_runs.c.input == identity, ingest_runs.c.byte_offset > 0)
        .order_by(ingest_runs.c.id.desc())
        .limit(1)
    ).first()


def received_row(
    *,
    source: str,
    key: str | None,
    type: str | None,
    event_time: float,
    payload: str,
    now: float,
    actor: str = ACTOR,
    note: str | None = None,
    replay_of: int | None = None,
    ingest_run_id: int | None = None,
    line_no: int | None = None,
) -> dict[str, object]:
    """The row of a new event, as `receive` inserts it."""
    return {
        "source": source,
        "key": key,
        "type": type,
        "event_time": event_time,
        "payload": payload,
        "state": INITIAL.value,
        "attempts": 0,
        "available_at": now,
        "created_at": now,
        "updated_at": now,
        "actor": actor,
        "note": note,
        "replay_of": replay_of,
        "ingest_run_id": ingest_run_id,
        "line_no": line_no,
    }


def receive(conn: Connection, rows: list[dict[str, object]]) -> list[int]:
    """Insert RECEIVED rows, skipping producer-id and line repeats; return the new ids."""
    if not rows:
        return []
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(events).on_conflict_do_nothing().returning(events.c.id)
    return list(conn.execute(stmt, rows).scalars().all())


def accept(conn: Connection, ids: list[int], *, now: float) -> None:
    """RECEIVED -> ACCEPTED for rows inserted in this transaction."""
    transition(conn, ids, State.RECEIVED, State.ACCEPTED, owner=INGESTION, actor=ACTOR, now=now)


class Ingest:
    """One ingest of one input; `run()` does the work."""

    def __init__(
        self,
        engine: Engine,
        path: str,
        *,
        source: str | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        rejects: str | None = None,
        batch: int = DEFAULT_BATCH,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_event_bytes < 16:
            raise errors.UsageError("--max-event-bytes must be at least 16")
        if batch < 1:
            raise errors.UsageError("batch must be at least 1")
        self.engine = engine
        self.path = path
        self.max_event_bytes = max_event_bytes
        self.rejects_path = rejects
        self.batch = batch
        self.progress = progress
        self.clock = clock
        name = "stdin" if path == "-" else os.path.basename(path)
        if name.endswith(".gz"):
            name = name[:-3]
        self.default_source = source or name

    def run(self) -> IngestReport:
        stream, identity, _size = open_input(self.path)
        try:
            return self._run(stream, identity)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    def _run(self, stream: BinaryIO, identity: str) -> IngestReport:
        started = time.monotonic()
        reader, report, rejects = self._start(stream, identity)
        try:
            pending: list[Candidate | Rejection] = []
            last: _Line | None = None
            try:
                for line in reader:
                    last = line
                    item = _classify(
                        line, default_source=self.default_source, max_bytes=self.max_event_bytes
                    )
                    report.lines += 1
                    if item is None:
                        report.blank += 1
                        continue
                    pending.append(item)
                    if len(pending) >= self.batch:
                        self._commit(pending, reader, report, rejects)
                        pending = []
                        if self.progress:
                            self.progress(reader.offset, reader.line_no)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                self._commit(pending, reader, report, rejects, final=False)
                where = f" after line {last.line_no}" if last else ""
                raise errors.InputError(f"cannot read {self.path}{where}: {exc}") from exc
            self._commit(pending, reader, report, rejects, final=True)
            if self.progress:
                self.progress(reader.offset, reader.line_no)
        finally:
            if rejects is not None:
                rejects.close()
        report.held_tail_bytes = reader.held_tail
        report.seconds = time.monotonic() - started
        return report

    def _start(
        self, stream: BinaryIO, identity: str
    ) -> tuple[_Reader, IngestReport, IO[str] | None]:
        now = self.clock()
        reader = _Reader(stream, self.max_event_bytes, hold_tail=identity != "-")
        with translated("starting the ingest"), self.engine.begin() as conn:
            run = _latest_run(conn, identity) if identity != "-" else None
            if run is not None and run.byte_offset > 0:
                try:
                    reader.skip(run.byte_offset, run.lines)
                except (OSError, EOFError, gzip.BadGzipFile) as exc:
                    raise errors.InputError(f"cannot read {self.path}: {exc}") from exc
                if reader.offset == run.byte_offset and reader.sha.hexdigest() == run.prefix_sha256:
                    report = IngestReport(
                        input=identity,
                        run_id=run.id,
                        resumed_at_line=run.lines,
                        total_accepted=run.accepted,
                        total_duplicates=run.duplicates,
                        total_rejected=run.rejected,
                    )
                    rejects = self._open_rejects(run.rejects_path, run.rejects_offset)
                    return reader, report, rejects
                # The file changed under the checkpoint: a new input, read from the start.
                stream.seek(0)
                reader = _Reader(stream, self.max_event_bytes, hold_tail=identity != "-")
            run_id = conn.execute(
                sa.insert(ingest_runs)
                .values(
                    input=identity,
                    started_at=now,
                    updated_at=now,
                    prefix_sha256=hashlib.sha256().hexdigest(),
                    rejects_path=os.path.abspath(self.rejects_path) if self.rejects_path else None,
                )
                .returning(ingest_runs.c.id)
            ).scalar_one()
        return reader, IngestReport(input=identity, run_id=run_id), self._open_rejects(None, 0)

    def _open_rejects(self, previous: str | None, offset: int) -> IO[str] | None:
        if self.rejects_path is None:
            return None
        path = os.path.abspath(self.rejects_path)
        try:
            if previous == path and os.path.exists(path) and os.path.getsize(path) >= offset:
                handle = open(path, "r+", encoding="utf-8")
                handle.truncate(offset)  # drop lines written after the last checkpoint
                handle.seek(offset)
                return handle
            return open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise errors.InputError(f"cannot write rejects to {path}: {exc.strerror}") from exc

    def _commit(
        self,
        pending: list[Candidate | Rejection],
        reader: _Reader,
        report: IngestReport,
        rejects: IO[str] | None,
        *,
        final: bool = False,
    ) -> None:
        now = self.clock()
        rows: list[dict[str, object]] = []
        rejected: list[Rejection] = []
        for item in pending:
            if isinstance(item, Rejection):
                rejected.append(item)
                continue
            rows.append(
                received_row(
                    source=item.source,
                    key=item.key,
                    type=item.type,
                    event_time=item.event_time,
                    payload=item.payload,
                    now=now,
                    ingest_run_id=report.run_id,
                    line_no=item.line_no,
                )
            )
        rejects_offset: Any = ingest_runs.c.rejects_offset  # unchanged without --rejects
        if rejects is not None:
            for rejection in rejected:
                rejects.write(json.dumps(rejection.__dict__, ensure_ascii=False) + "\n")
            rejects.flush()
            os.fsync(rejects.fileno())  # as durable as the checkpoint that points past it
            rejects_offset = rejects.tell()
        with translated(f"accepting lines up to {reader.line_no}"), self.engine.begin() as conn:
            ids = receive(conn, rows)
            accept(conn, ids, now=now)
            buffer.buffer_events(conn, ids, now=now)
            duplicates = len(rows) - len(ids)
            matched = conn.execute(
                sa.update(ingest_runs)
                .where(ingest_runs.c.id == report.run_id)
                .values(
                    updated_at=now,
                    finished_at=now if final else None,
                    lines=reader.line_no,
                    byte_offset=reader.offset,
                    prefix_sha256=reader.sha.hexdigest(),
                    accepted=ingest_runs.c.accepted + len(ids),
                    duplicates=ingest_runs.c.duplicates + duplicates,
                    rejected=ingest_runs.c.rejected + len(rejected),
                    rejects_offset=rejects_offset,
                )
            ).rowcount
            if matched != 1:
                raise errors.GuardFailed(f"ingest run {report.run_id} vanished")
        report.accepted += len(ids)
        report.duplicates += duplicates
        report.rejected += len(rejected)
        report.total_accepted += len(ids)
        report.total_duplicates += duplicates
        report.total_rejected += len(rejected)
        report.rejections.extend(rejected[: max(0, 1000 - len(report.rejections))])
