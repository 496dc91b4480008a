"""Fault injection: the promise under kill -9, contention, a full disk and hostile input.

Real processes (`python -m chronos ...`) on real files. Handlers live in a module
written into `tmp_path` and decide each event's fate from a hash of its id, so the
test knows which failures were meant. Moments to strike are picked by a seeded
`random.Random` from progress read in the database (polled with a deadline, never a
fixed sleep). Every test ends with the full audit, `Chronos(url).check()`, plus its
own checks.

Sizes are module constants multiplied by `CHRONOS_FAULT_SCALE` (default 1, sized for
a 2-core CI machine; it only raises them); `CHRONOS_FAULT_SEED` changes the kill
moments. For example:
`CHRONOS_FAULT_SCALE=5 .venv/bin/pytest -m faults -s`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos import Chronos
from chronos.check import CheckReport
from chronos.db import READ_ONLY, create_engine, resolve_url
from chronos.ingestion import DEFAULT_MAX_EVENT_BYTES
from chronos.schema import LIVE, event_transitions, events, ingest_runs, processed_events
from chronos.states import TERMINAL, State

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REPO = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("CHRONOS_FAULT_SCALE", "1"))
SEED = int(os.environ.get("CHRONOS_FAULT_SEED", "20261127"))


def _scaled(n: int) -> int:
    """`n` times the scale; the defaults are the floor (the tests rely on their sizes)."""
    return max(n, int(n * SCALE))


CHAOS_EVENTS = _scaled(20_000)
CHAOS_WORKERS = 4
CHAOS_KILLS = 6
FIRE_LINES = _scaled(15_000)
FIRE_KILLS = 3
CONTENTION_EVENTS = _scaled(8_000)
DISK_LINES = 20_000  # the full-disk tests are about where the limit falls, not volume
DISK_WORK_EVENTS = 4_000
FUZZ_EXAMPLES = _scaled(200)
DEADLINE_S = 240.0 * max(1.0, SCALE)
POLL_S = 0.02

HANDLERS = '''\
"""Handlers for the fault-injection tests: each outcome is fixed by a hash of the event id."""

from __future__ import annotations

import hashlib
import time

from chronos import RetryableError, TerminalError

TERMINAL_PER_MILLE = 20  # 2 %: fail terminally on every attempt
RETRYABLE_PER_MILLE = 50  # 5 %: fail retryably on attempts 1 and 2, then succeed
SLOW_PER_MILLE = 10  # 1 %: take 0.2 s


def roll(event_id: int) -> int:
    """A stable number in [0, 1000) for an event id."""
    digest = hashlib.sha256(str(event_id).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000


def planned_terminal(event_id: int) -> bool:
    return roll(event_id) < TERMINAL_PER_MILLE


def planned_retryable(event_id: int) -> bool:
    return 0 <= roll(event_id) - TERMINAL_PER_MILLE < RETRYABLE_PER_MILLE


def chaos(event):
    r = roll(event.id)
    if r < TERMINAL_PER_MILLE:
        raise TerminalError(f"planned terminal failure of {event.id}")
    r -= TERMINAL_PER_MILLE
    if r < RETRYABLE_PER_MILLE and event.attempt <= 2:
        raise RetryableError(f"planned retryable failure of {event.id}")
    r -= RETRYABLE_PER_MILLE
    if r < SLOW_PER_MILLE:
        time.sleep(0.2)
    return {"id": event.id, "attempt": event.attempt}
'''


# -- processes ------------------------------------------------------------------


@dataclass
class Proc:
    """One `python -m chronos` process; its output goes to files in tmp_path."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def stdout(self) -> str:
        return self.out_path.read_text("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text("utf-8", "replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout} s; stderr: {self.stderr[-2000:]}"
            ) from None

    def kill(self) -> int:
        self.popen.kill()
        return self.wait(30)

    def stop(self) -> int:
        """SIGTERM: a graceful stop, which must exit 0."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait(60)

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


Launch = Callable[..., Proc]


@pytest.fixture
def handlers(tmp_path: Path) -> ModuleType:
    """The handler module, written where the worker processes import it from."""
    folder = tmp_path / "handlers"
    folder.mkdir()
    path = folder / "fault_handlers.py"
    path.write_text(HANDLERS, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("fault_handlers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def launch(tmp_path: Path, handlers: ModuleType) -> Iterator[Launch]:
    """Start `python -m chronos --db URL ARGS...`; any still running at the end are killed."""
    started: list[Proc] = []
    numbers = itertools.count()
    code = Path(handlers.__file__ or "").parent

    def start(
        url: str, *args: str, name: str | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> Proc:
        name = name or f"proc{next(numbers)}"
        env = {k: v for k, v in os.environ.items() if k != "CHRONOS_DB"}
        path = [str(code), str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "chronos", "--db", url, *args],
                stdout=out,
                stderr=err,
                env=env,
                cwd=tmp_path,
                preexec_fn=preexec_fn,
            )
        proc = Proc(name, popen, out_path, err_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.alive():
            proc.popen.kill()
        proc.popen.wait()


def _file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: writes past `limit` bytes fail with EFBIG instead of killing the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


# -- the database ---------------------------------------------------------------


class Probe:
    """Reads counts while other processes write: plain read transactions, no write lock."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(resolve_url(url))

    def scalar(self, query: sa.Select[Any]) -> int:
        with self.engine.connect().execution_options(**READ_ONLY) as conn:
            return int(conn.execute(query).scalar_one() or 0)

    def live(self) -> int:
        return self.scalar(sa.select(sa.func.count()).select_from(events).where(LIVE))

    def events(self) -> int:
        return self.scalar(sa.select(sa.func.count()).select_from(events))

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def probe(sqlite_url: str) -> Iterator[Probe]:
    reader = Probe(sqlite_url)
    yield reader
    reader.close()


def _wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = DEADLINE_S,
    alive: list[Proc] | tuple[Proc, ...] = (),
) -> None:
    """Poll `condition` until it holds; fail at the deadline or when a process in `alive` dies."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in alive:
            if not proc.alive():
                raise AssertionError(
                    f"{proc.name} exited {proc.popen.returncode} while waiting for {what}: "
                    f"{proc.stderr[-2000:]}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def _audit(url: str) -> CheckReport:
    """The full invariant audit; prints every violation when it fails."""
    with Chronos(url) as app:
        report = app.check()
    if not report.ok:
        for violation in report.violations:
            print(f"violation {violation.rule} event={violation.event_id}: {violation.detail}")
    assert report.ok, [v.as_dict() for v in report.violations[:20]]
    assert report.expired_leases == []
    return report


@dataclass
class Snapshot:
    """Every event with its storage row and last history step, read once."""

    rows: dict[int, Any]
    stored: dict[int, Any]
    last_detail: dict[int, str]
    details: list[str]


def _snapshot(url: str) -> Snapshot:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            rows = {r.id: r for r in conn.execute(sa.select(events))}
            stored = {r.event_id: r for r in conn.execute(sa.select(processed_events))}
            last: dict[int, str] = {}
            details: list[str] = []
            query = sa.select(event_transitions.c.event_id, event_transitions.c.detail)
            for event_id, detail in conn.execute(query.order_by(event_transitions.c.id)):
                last[event_id] = detail or ""
                details.append(detail or "")
    finally:
        engine.dispose()
    return Snapshot(rows, stored, last, details)


# -- inputs ---------------------------------------------------------------------


@dataclass
class Input:
    """A generated JSON Lines file and what ingesting it must produce."""

    path: Path
    lines: int
    event_lines: set[int] = field(default_factory=set)  # lines that become events
    duplicate_lines: set[int] = field(default_factory=set)  # repeats of an earlier id
    bad_lines: set[int] = field(default_factory=set)


def _write_input(
    path: Path, lines: int, *, bad_every: int = 0, pad: int = 0, source: str = "probe"
) -> Input:
    """Lines with ids, lines without (many byte-identical), repeated ids, bad lines."""
    spec = Input(path, lines)
    last_with_id = ""
    with path.open("w", encoding="utf-8") as handle:
        for n in range(1, lines + 1):
            if bad_every and n % bad_every == 0:
                text = json.dumps({"timestamp": "yesterday", "line": n})
                spec.bad_lines.add(n)
            elif n % 7 == 0:
                text = json.dumps({"timestamp": 1767225600, "source": source, "v": n % 3})
                spec.event_lines.add(n)
            elif n % 11 == 1 and last_with_id:
                text = last_with_id
                spec.duplicate_lines.add(n)
            else:
                obj = {"timestamp": 1767225600 + n, "source": source, "id": f"k{n}", "v": n}
                if pad:
                    obj["pad"] = "x" * pad
                text = json.dumps(obj)
                last_with_id = text
                spec.event_lines.add(n)
            handle.write(text + "\n")
    return spec


def _run_lines(url: str) -> list[tuple[int, int]]:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            query = sa.select(events.c.ingest_run_id, events.c.line_no)
            return [(row.ingest_run_id, row.line_no) for row in conn.execute(query)]
    finally:
        engine.dispose()


def _assert_each_line_once(url: str, spec: Input) -> int:
    """Every valid line of `spec` is one event of one ingest run; return that run's id."""
    pairs = _run_lines(url)
    assert len(pairs) == len(set(pairs)), "a line was accepted twice"
    runs = {run for run, _ in pairs}
    assert len(runs) == 1, runs
    assert {line for _, line in pairs} == spec.event_lines
    return runs.pop()


def _db_sizes(url: str) -> dict[str, int]:
    path = sa.engine.make_url(url).database
    assert path is not None
    return {
        suffix or "db": os.path.getsize(path + suffix)
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(path + suffix)
    }


def _error_line(stderr: str) -> str:
    """The one `error:` line of a failed command, which must come with no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# -- 1. chaos -------------------------------------------------------------------


def test_workers_killed_at_random_moments_still_bring_every_event_to_its_planned_end(
    sqlite_url: str, tmp_path: Path, launch: Launch, probe: Probe, handlers: ModuleType
) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "chaos.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for n in range(CHAOS_EVENTS):
            obj = {"timestamp": 1767225600 + n, "source": "chaos", "id": f"c{n}", "seq": n}
            handle.write(json.dumps(obj) + "\n")
    with Chronos(sqlite_url) as app:
        assert app.ingest(str(path)).accepted == CHAOS_EVENTS
    args = ("worker", "--handler", "fault_handlers:chaos", "--quiet", "--json")
    args += ("--lease", "1", "--backoff", "0.05", "--max-attempts", "4")
    workers = {f"w{n}": launch(sqlite_url, *args, "--name", f"w{n}") for n in range(CHAOS_WORKERS)}

    kill_points = sorted(rng.uniform(0.05, 0.85) for _ in range(CHAOS_KILLS))
    for n, fraction in enumerate(kill_points):
        target = int(fraction * CHAOS_EVENTS)
        _wait_for(
            lambda target=target: CHAOS_EVENTS - probe.live() >= target,
            f"{target} terminal events",
            alive=list(workers.values()),
        )
        victim = workers.pop(rng.choice(sorted(workers)))
        assert victim.kill() == -signal.SIGKILL
        workers[f"r{n}"] = launch(sqlite_url, *args, "--name", f"r{n}")

    final = launch(sqlite_url, *args, "--drain", "--name", "final")
    assert final.wait() == 0, final.stderr[-2000:]
    for worker in workers.values():
        assert worker.stop() == 0, worker.stderr[-2000:]
    for worker in [*workers.values(), final]:
        assert "Traceback" not in worker.stderr

    report = _audit(sqlite_url)
    snap = _snapshot(sqlite_url)
    assert len(snap.rows) == CHAOS_EVENTS
    assert {row.state for row in snap.rows.values()} <= {s.value for s in TERMINAL}
    assert len(snap.stored) == report.counts["PROCESSED"] == report.storage_rows
    planned = exhausted = retried = 0
    for event_id, row in snap.rows.items():
        if row.state == State.PROCESSED:
            assert not handlers.planned_terminal(event_id)
            result = json.loads(snap.stored[event_id].result)
            assert (result["id"], result["attempt"]) == (event_id, row.attempts)
            if handlers.planned_retryable(event_id):  # two recorded retryable failures first
                assert row.attempts >= 3, (event_id, row.attempts)
                retried += 1
            continue
        detail = snap.last_detail[event_id]
        if handlers.planned_terminal(event_id):
            planned += 1
            assert detail == f"TerminalError: planned terminal failure of {event_id}" or (
                detail.startswith("attempts exhausted")
            ), detail
        else:
            exhausted += 1
            assert detail.startswith("attempts exhausted"), (event_id, detail)
    assert planned == sum(handlers.planned_terminal(i) for i in snap.rows)
    assert retried > 0.03 * CHAOS_EVENTS  # ~5 % retry twice, then succeed
    recovered = sum(d.endswith(" expired") and "lease of " in d for d in snap.details)
    assert recovered > 0, "no kill ever hit a held lease"
    print(
        f"\nchaos: {CHAOS_EVENTS:,} events, {CHAOS_WORKERS} workers, {CHAOS_KILLS} kill -9s, "
        f"{recovered} expired leases recovered; PROCESSED {report.counts['PROCESSED']:,} "
        f"({retried} after 2 planned retries), "
        f"FAILED_TERMINAL {report.counts['FAILED_TERMINAL']:,} ({planned} planned, "
        f"{exhausted} attempts exhausted); {report.transitions:,} transitions; check ok"
    )


# -- 2. ingest under fire -------------------------------------------------------


def test_ingest_killed_at_random_points_beside_busy_workers_accepts_each_line_once(
    sqlite_url: str, tmp_path: Path, launch: Launch, probe: Probe
) -> None:
    rng = random.Random(SEED + 2)
    spec = _write_input(tmp_path / "fire.jsonl", FIRE_LINES, bad_every=53)
    workers = [
        launch(sqlite_url, "worker", "--quiet", "--json", "--name", f"w{n}") for n in range(2)
    ]
    ingest_args = ("ingest", str(spec.path), "--json")

    kills = 0
    for n, fraction in enumerate(sorted(rng.uniform(0.1, 0.9) for _ in range(FIRE_KILLS))):
        target = int(fraction * len(spec.event_lines))
        ingest = launch(sqlite_url, *ingest_args, name=f"ingest{n}")
        _wait_for(
            lambda target=target, ingest=ingest: probe.events() > target or not ingest.alive(),
            f"more than {target} events",
            alive=workers,
        )
        time.sleep(rng.uniform(0, 0.03))  # a random moment within the next batch
        if not ingest.alive():
            break
        assert ingest.kill() == -signal.SIGKILL
        kills += 1
    committed_before_rerun = probe.events()
    final = launch(sqlite_url, *ingest_args, name="ingest-final")
    assert final.wait() == 1, final.stderr  # 1: the bad lines were rejected
    assert "Traceback" not in final.stderr
    summary = final.json()
    processed_meanwhile = probe.scalar(sa.select(sa.func.count()).select_from(processed_events))
    for worker in workers:
        assert worker.stop() == 0, worker.stderr[-2000:]
        assert "Traceback" not in worker.stderr

    run_id = _assert_each_line_once(sqlite_url, spec)
    assert summary["run_id"] == run_id
    assert summary["resumed"] is (kills > 0)
    assert (summary["total_accepted"], summary["total_duplicates"], summary["total_rejected"]) == (
        len(spec.event_lines),
        len(spec.duplicate_lines),
        len(spec.bad_lines),
    )
    assert kills >= 1, "every ingest finished before it could be killed"
    assert processed_meanwhile > 0, "the workers never ran beside the ingest"
    report = _audit(sqlite_url)
    print(
        f"\ningest under fire: {spec.lines:,} lines ({len(spec.event_lines):,} valid), "
        f"{kills} kill -9s, {committed_before_rerun:,} events committed before the last run, "
        f"{processed_meanwhile:,} processed meanwhile by 2 workers; "
        f"{report.events:,} events; check ok"
    )


# -- 3. contention --------------------------------------------------------------


def test_one_ingest_and_three_workers_on_one_sqlite_file_never_hit_a_lock_error(
    sqlite_url: str, tmp_path: Path, launch: Launch, probe: Probe
) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for n in range(CONTENTION_EVENTS):
            obj = {"timestamp": 1767225600 + n, "source": "busy", "id": n, "v": n * 0.5}
            handle.write(json.dumps(obj) + "\n")
    workers = [
        launch(sqlite_url, "worker", "--json", "--batch", "32", "--name", f"w{n}") for n in range(3)
    ]
    ingest = launch(sqlite_url, "ingest", str(path), "--json", name="ingest")

    assert ingest.wait() == 0, ingest.stderr
    assert ingest.json()["accepted"] == CONTENTION_EVENTS
    _wait_for(lambda: probe.live() == 0, "every event to end terminal", alive=workers)
    codes = [worker.stop() for worker in workers]

    for proc in [ingest, *workers]:
        assert "locked" not in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "error" not in proc.stderr.lower(), proc.stderr[-2000:]
    assert codes == [0, 0, 0], [w.stderr[-2000:] for w in workers]
    assert sum(w.json()["processed"] for w in workers) == CONTENTION_EVENTS
    report = _audit(sqlite_url)
    assert report.counts["PROCESSED"] == report.storage_rows == CONTENTION_EVENTS
    print(
        f"\ncontention: {CONTENTION_EVENTS:,} events, 1 ingest + 3 workers at once, "
        f"processed per worker {[w.json()['processed'] for w in workers]}; check ok"
    )


# -- 4. full disk ---------------------------------------------------------------
#
# RLIMIT_FSIZE makes write() past the limit fail with EFBIG (SIGXFSZ is ignored).
# SQLite maps only ENOSPC to SQLITE_FULL ("database or disk is full"); EFBIG comes
# back as SQLITE_IOERR_WRITE ("disk I/O error"), which Chronos also turns into
# DatabaseFull (exit 2). The limit covers every file the process writes, the -wal
# file included, so it is set relative to the sizes the files have now.


def test_ingest_hitting_a_file_size_limit_exits_2_keeps_its_commits_and_resumes(
    sqlite_url: str, tmp_path: Path, launch: Launch
) -> None:
    spec = _write_input(tmp_path / "disk.jsonl", DISK_LINES, pad=100)
    limit = max(_db_sizes(sqlite_url).values()) + 3 * 1024 * 1024

    full = launch(
        sqlite_url, "ingest", str(spec.path), "--json", preexec_fn=_file_size_limit(limit)
    )
    assert full.wait() == 2, (full.stdout, full.stderr)
    line = _error_line(full.stderr)
    assert "disk" in line and "nothing accepted was lost" in line, line
    _audit(sqlite_url)
    with Chronos(sqlite_url) as app, app.engine.connect() as conn:
        [run] = conn.execute(sa.select(ingest_runs)).all()
        committed = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        committed_lines = {
            n for n in conn.execute(sa.select(events.c.line_no)).scalars() if n is not None
        }
    assert run.finished_at is None
    assert 0 < committed == run.accepted < len(spec.event_lines), "the limit was not reached"
    assert committed_lines == {n for n in spec.event_lines if n <= run.lines}

    resumed = launch(sqlite_url, "ingest", str(spec.path), "--json")
    assert resumed.wait() == 0, resumed.stderr
    summary = resumed.json()
    assert (summary["resumed"], summary["resumed_at_line"]) == (True, run.lines)
    assert summary["total_accepted"] == len(spec.event_lines)
    _assert_each_line_once(sqlite_url, spec)
    report = _audit(sqlite_url)
    print(
        f"\nfull disk, ingest: {spec.lines:,} lines, limit {limit:,} bytes, failed with "
        f"{line!r} after {committed:,} committed events (= checkpoint line {run.lines:,}); "
        f"resumed to {report.events:,} events; check ok"
    )


def test_worker_hitting_a_file_size_limit_exits_2_and_another_drains_everything(
    sqlite_url: str, tmp_path: Path, launch: Launch, probe: Probe
) -> None:
    spec = _write_input(tmp_path / "work.jsonl", DISK_WORK_EVENTS, pad=100)
    with Chronos(sqlite_url) as app:
        assert app.ingest(str(spec.path)).accepted == len(spec.event_lines)
    limit = max(_db_sizes(sqlite_url).values()) + 256 * 1024

    full = launch(
        sqlite_url,
        *("worker", "--quiet", "--json", "--lease", "1", "--batch", "64", "--drain"),
        name="limited",
        preexec_fn=_file_size_limit(limit),
    )
    assert full.wait() == 2, ("the limit was not reached", full.stdout, full.stderr[-2000:])
    line = _error_line(full.stderr)
    assert line.startswith("error: worker") and "disk" in line, line
    stranded = probe.live()
    assert stranded > 0

    rescuer = launch(sqlite_url, "worker", "--quiet", "--json", "--lease", "1", "--drain")
    assert rescuer.wait() == 0, rescuer.stderr[-2000:]
    report = _audit(sqlite_url)
    assert report.counts["PROCESSED"] == report.storage_rows == len(spec.event_lines)
    print(
        f"\nfull disk, worker: {len(spec.event_lines):,} events, limit {limit:,} bytes, "
        f"failed with {line!r} leaving {stranded:,} unfinished; "
        f"rescuer processed {rescuer.json()['processed']:,}; check ok"
    )


def test_a_full_disk_message_says_the_disk_is_full(
    sqlite_url: str, tmp_path: Path, launch: Launch
) -> None:
    spec = _write_input(tmp_path / "small.jsonl", 3000, pad=100)
    limit = max(_db_sizes(sqlite_url).values()) + 64 * 1024
    full = launch(sqlite_url, "ingest", str(spec.path), preexec_fn=_file_size_limit(limit))
    assert full.wait() == 2, full.stderr
    _audit(sqlite_url)
    assert "full" in _error_line(full.stderr)


# -- 5. environment errors ------------------------------------------------------


def _make_immutable(path: Path) -> Callable[[], None]:
    """Make `path` truly read-only, for root too; return the undo. Skip when impossible.

    Root ignores permission bits (chmod 0444, a read-only folder), so as root the file
    gets the ext4 immutable attribute (`chattr +i`, needs CAP_LINUX_IMMUTABLE).
    """
    if os.geteuid() != 0:
        path.chmod(0o444)
        return lambda: path.chmod(0o644)
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without a working `chattr +i`: cannot make a file read-only")
    try:
        with path.open("r+b"):
            pass
    except PermissionError:
        return lambda: subprocess.run([chattr, "-i", str(path)], check=True)
    subprocess.run([chattr, "-i", str(path)], check=True)
    pytest.skip("`chattr +i` did not stop root from writing")


def _run_all(url: str, commands: dict[str, list[str]], cwd: Path) -> dict[str, Any]:
    """Run the commands at once (they only fail fast); return each completed process."""
    env = {k: v for k, v in os.environ.items() if k != "CHRONOS_DB"}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "chronos", "--db", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        for name, args in commands.items()
    }
    results = {}
    for name, popen in running.items():
        stdout, stderr = popen.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    return results


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    path = tmp_path / "three.jsonl"
    path.write_text(
        "".join(json.dumps({"timestamp": 1767225600 + n, "id": n}) + "\n" for n in range(3)),
        encoding="utf-8",
    )
    return {
        "ingest": ["ingest", str(path)],
        "worker": ["worker", "--drain"],
        "stats": ["stats"],
        "check": ["check"],
    }


def _assert_fails_cleanly(result: Any, *words: str) -> str:
    assert result.returncode == 2, (result.args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return str(lines[0])


def test_a_read_only_database_refuses_writers_with_one_line_and_serves_readers(
    sqlite_url: str, tmp_path: Path
) -> None:
    # Only commands that write fail: stats and check only read, and `chronos check`
    # is documented as read-only, so auditing a read-only file (a backup) must work.
    db_path = Path(sa.engine.make_url(sqlite_url).database or "")
    undo = _make_immutable(db_path)
    try:
        results = _run_all(sqlite_url, _commands(tmp_path), tmp_path)
    finally:
        undo()
    for name in ("ingest", "worker"):
        _assert_fails_cleanly(results[name], "read-only")
    for name in ("stats", "check"):
        assert results[name].returncode == 0, results[name].stderr
        assert results[name].stderr == ""
    assert "ok: every rule holds" in results["check"].stdout
    assert _audit(sqlite_url).events == 0


def test_a_read_only_uri_serves_readers_and_refuses_writers(
    sqlite_url: str, tmp_path: Path
) -> None:
    db_path = sa.engine.make_url(sqlite_url).database
    results = _run_all(f"sqlite:///file:{db_path}?mode=ro&uri=true", _commands(tmp_path), tmp_path)
    _audit(sqlite_url)
    assert results["stats"].returncode == 0, results["stats"].stderr
    assert results["check"].returncode == 0, results["check"].stderr
    _assert_fails_cleanly(results["ingest"], "read-only")
    _assert_fails_cleanly(results["worker"], "read-only")


def test_a_missing_folder_is_one_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "no-such-folder"
    url = f"sqlite:///{folder / 'chronos.db'}"
    commands = _commands(tmp_path) | {"migrate": ["migrate"]}

    results = _run_all(url, commands, tmp_path)

    for name in ("ingest", "worker", "stats", "check"):
        _assert_fails_cleanly(results[name], "no database at", "chronos migrate")
    _assert_fails_cleanly(results["migrate"], "no folder")
    assert not folder.exists()


def test_a_file_that_is_not_a_database_is_one_clear_error_and_left_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "junk.db"
    junk = random.Random(SEED).randbytes(64 * 1024)
    path.write_bytes(junk)

    results = _run_all(f"sqlite:///{path}", _commands(tmp_path), tmp_path)

    for name in ("ingest", "worker", "stats", "check"):
        _assert_fails_cleanly(results[name], "not a Chronos database")
    assert path.read_bytes() == junk


def test_a_database_from_a_newer_chronos_is_one_clear_error_and_left_unchanged(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = create_engine(resolve_url(sqlite_url))
    try:
        with engine.begin() as conn:
            head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")

        results = _run_all(sqlite_url, _commands(tmp_path), tmp_path)

        for name in ("ingest", "worker", "stats", "check"):
            _assert_fails_cleanly(results[name], "ffff_from_the_future", "upgrade Chronos")
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{head}'")
    finally:
        engine.dispose()
    assert _audit(sqlite_url).events == 0  # nothing was written under the newer revision


# -- 6. fuzzing the input -------------------------------------------------------

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_timestamps = st.one_of(
    st.integers(min_value=0, max_value=4_000_000_000),
    st.floats(min_value=-1e10, max_value=1e10),
    st.datetimes(timezones=st.just(dt.UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(["2026-11-27T10:00:00.123456789+02:00", "2026-11-27T10:00:00", "today"]),
    st.floats(),
    st.integers(),
    _json_values,
)
_plausible_objects = st.fixed_dictionaries(
    {"timestamp": _timestamps},
    optional={
        "source": st.one_of(st.sampled_from(["a", "b"]), st.text(max_size=12), _json_scalars),
        "id": st.one_of(st.sampled_from(["a", "b", 1, 2, "1"]), _json_scalars),
        "type": st.one_of(st.text(max_size=12), _json_scalars),
        "v": _json_values,
    },
)
_objects = st.one_of(_plausible_objects, st.dictionaries(st.text(max_size=8), _json_values))
_valid_objects = st.fixed_dictionaries(
    {"timestamp": st.integers(min_value=0, max_value=4_000_000_000)},
    optional={"source": st.sampled_from(["a", "b"]), "id": st.integers(0, 30), "v": _json_values},
)


def _dumped(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda obj, ascii_only: json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8"),
        objects,
        st.booleans(),
    )


# Half the lines look like telemetry (so many are accepted, and ids repeat across
# inputs: duplicates), half are any JSON, bytes or text.
_lines = st.one_of(
    st.one_of(_dumped(_valid_objects), _dumped(_plausible_objects)),
    st.one_of(
        _dumped(st.one_of(_objects, _json_values)),
        st.binary(max_size=60),
        st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    ),
)
_inputs = st.one_of(
    st.binary(max_size=300),
    st.lists(_lines, max_size=25).map(b"\n".join),
    st.lists(_lines, max_size=25).map(lambda parts: b"\r\n".join(parts) + b"\n"),
)


def test_any_bytes_as_input_end_each_line_accepted_duplicate_rejected_or_blank(
    sqlite_url: str, tmp_path: Path
) -> None:
    names = itertools.count()
    totals = {"lines": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "blank": 0}

    with Chronos(sqlite_url) as app:

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
        @given(data=_inputs, max_bytes=st.sampled_from([48, 256, *[DEFAULT_MAX_EVENT_BYTES] * 3]))
        def ingest_bytes(data: bytes, max_bytes: int) -> None:
            path = tmp_path / f"fuzz-{next(names)}.jsonl"
            path.write_bytes(data)

            report = app.ingest(str(path), source="fuzz", max_event_bytes=max_bytes)

            lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            if report.held_tail_bytes:  # an unfinished last line waits for the next run
                tail = data.rsplit(b"\n", 1)[-1]
                assert not data.endswith(b"\n") and report.held_tail_bytes == len(tail)
                lines -= 1
            assert report.lines == lines
            assert report.accepted + report.duplicates + report.rejected + report.blank == lines
            assert report.run_id is not None
            with app.engine.connect() as conn:
                stored = list(
                    conn.execute(
                        sa.select(events.c.line_no).where(events.c.ingest_run_id == report.run_id)
                    ).scalars()
                )
            rejected = [r.line_no for r in report.rejections]
            assert len(stored) == report.accepted
            assert not set(stored) & set(rejected)
            assert len(set(rejected)) == len(rejected) == report.rejected
            assert all(r.reason for r in report.rejections)
            for key in totals:
                totals[key] += getattr(report, key)

        ingest_bytes()

    report = _audit(sqlite_url)
    assert report.events == totals["accepted"]
    print(f"\nfuzz: {FUZZ_EXAMPLES} inputs, {totals}; check ok")


# -- 7. hostile payloads --------------------------------------------------------


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for n in range(levels):
        value = {"d": value} if n % 2 else [value]
    return value


HOSTILE_LINES = [
    json.dumps({"timestamp": 1767225600, "sql": "'; DROP TABLE events; --"}),
    json.dumps(
        {
            "timestamp": 1767225601,
            "source": "'; DROP TABLE events; --",
            "id": "1' OR '1'='1",
            "type": 'Robert"); DELETE FROM processed_events; --',
        }
    ),
    json.dumps({"timestamp": 1767225602, "quotes": '"\'`\\\\ \\" \\n', "empty": ""}),
    json.dumps({"timestamp": 1767225603, "nul": "a\u0000b", "ctl": "\u0001\u001f\u007f"}),
    '{"timestamp":1767225604,"max":1e308,"negzero":-0.0,"tiny":5e-324,"big":18446744073709551616}',
    '{"timestamp": 1767225605, "neg": -9223372036854775809, "exp": 1E+2, "frac": 0.1000000000}',
    json.dumps({"timestamp": 1767225606, "deep": _deep(63)}),
    json.dumps(
        {
            "timestamp": 1767225607,
            "emoji": "🛰️👩‍👩‍👧",
            "rtl": "שלום مرحبا",
            "comb": "e\u0301a\u0308",
        },
        ensure_ascii=False,
    ),
    json.dumps({"timestamp": 1767225608, "pair": "🚀", "bmp": "\ufeff\uffff"}),  # escaped
    '{ "timestamp" :1767225609 ,  "spaces" : [ 1 , 2 ] , "dup": 1, "dup": 2 }',
    json.dumps({"timestamp": 1767225610, "seps": "\u2028\u2029\u0085"}, ensure_ascii=False),
    json.dumps({"timestamp": "2026-11-27T10:00:00.123456789-05:30", "id": 7, "tz": True}),
]


def _load_payload_rows(url: str, run_id: int) -> dict[int, Any]:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect() as conn:
            query = (
                sa.select(events.c.line_no, events.c.id, events.c.payload)
                .add_columns(processed_events.c.result)
                .select_from(events.outerjoin(processed_events))
                .where(events.c.ingest_run_id == run_id)
            )
            return {row.line_no: row for row in conn.execute(query)}
    finally:
        engine.dispose()


def _same_json(left: Any, right: Any) -> bool:
    """Equal, and equal as text too (so -0.0 is not 0.0 and key order counts)."""
    as_text = json.dumps(left, ensure_ascii=False) == json.dumps(right, ensure_ascii=False)
    return bool(left == right and as_text)


def test_hostile_payloads_are_stored_returned_and_processed_byte_for_byte(
    db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.jsonl"
    with path.open("wb") as handle:
        for n, line in enumerate(HOSTILE_LINES):
            handle.write(line.encode("utf-8") + (b"\r\n" if n % 3 == 0 else b"\n"))

    with Chronos(db_url) as app:
        report = app.ingest(str(path))
        assert (report.accepted, report.rejected) == (len(HOSTILE_LINES), 0), report.rejections
        app.worker(max_attempts=1).run(drain=True)
        rows = _load_payload_rows(db_url, report.run_id)
        for line_no, line in enumerate(HOSTILE_LINES, start=1):
            row = rows[line_no]
            assert row.payload == line
            assert row.payload.encode("utf-8") == line.encode("utf-8")
            detail = app.inspect(row.id)
            assert detail["state"] == State.PROCESSED, detail["last_error"]
            assert _same_json(detail["payload"], json.loads(line)), line
            assert _same_json(json.loads(row.result)["payload"], json.loads(line)), line
            assert _same_json(detail["result"]["payload"], json.loads(line)), line
    with Chronos(db_url) as app, app.engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
    assert {"events", "processed_events", "event_transitions"} <= set(tables)
    report_check = _audit(db_url)
    assert report_check.counts["PROCESSED"] == len(HOSTILE_LINES)


LONE_SURROGATE_FIELDS = [
    '{"timestamp": 1767225600, "source": "\\ud800"}',
    '{"timestamp": 1767225601, "id": "key-\\udfff"}',
    '{"timestamp": 1767225602, "type": "\\ud83d"}',
]


def test_a_lone_surrogate_in_a_field_is_rejected_and_the_lines_around_it_accepted(
    sqlite_url: str, tmp_path: Path
) -> None:
    good = json.dumps({"timestamp": 1767225603, "id": "fine"})
    path = tmp_path / "surrogates.jsonl"
    path.write_text("\n".join([good, *LONE_SURROGATE_FIELDS, good.replace("fine", "ok")]) + "\n")
    try:
        with Chronos(sqlite_url) as app:
            report = app.ingest(str(path))
    finally:
        _audit(sqlite_url)
    assert (report.accepted, report.rejected) == (2, 3)
    assert {r.line_no for r in report.rejections} == {2, 3, 4}


def test_a_payload_with_a_lone_escaped_surrogate_is_rejected_or_processed(
    sqlite_url: str, tmp_path: Path
) -> None:
    line = '{"timestamp": 1767225600, "half": "\\ud83d"}'
    path = tmp_path / "half.jsonl"
    path.write_text(line + "\n" + json.dumps({"timestamp": 1767225601}) + "\n")
    with Chronos(sqlite_url) as app:
        report = app.ingest(str(path))
        if report.rejected:  # rejecting it at the acceptance boundary keeps the promise too
            assert [r.line_no for r in report.rejections] == [1]
            assert report.accepted == 1
        try:
            app.worker(max_attempts=1).run(drain=True)
        finally:
            _audit(sqlite_url)
        if not report.rejected:
            detail = app.inspect(1)
            assert detail["state"] == State.PROCESSED
            assert detail["result"]["payload"] == json.loads(line)


def _result_with_a_lone_surrogate(event: Any) -> dict[str, str]:
    if event.payload.get("raise"):
        raise ValueError("cannot read \udc80")
    return {"text": "\ud800"}


def test_a_handler_result_or_error_that_is_not_unicode_fails_the_event_not_the_worker(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text('{"timestamp": 1}\n{"timestamp": 2, "raise": true}\n', encoding="utf-8")
    with Chronos(sqlite_url) as app:
        app.ingest(str(path))
        try:
            app.worker(_result_with_a_lone_surrogate, max_attempts=1).run(drain=True)
        finally:
            _audit(sqlite_url)
        assert [app.inspect(i)["state"] for i in (1, 2)] == ["FAILED_TERMINAL"] * 2


@pytest.mark.parametrize(
    "number", ["9" * 5000, "1e400"], ids=["5000-digit-integer", "float-overflow"]
)
def test_an_accepted_number_can_be_inspected_and_processed(
    sqlite_url: str, tmp_path: Path, number: str
) -> None:
    line = '{"timestamp": 1767225600, "n": ' + number + "}"
    path = tmp_path / "number.jsonl"
    path.write_text(line + "\n")
    with Chronos(sqlite_url) as app:
        report = app.ingest(str(path))
        if report.rejected:  # rejecting it at the acceptance boundary keeps the promise too
            assert report.rejections[0].reason
            return
        app.worker(max_attempts=1, backoff=0).run(drain=True)
        _audit(sqlite_url)
        detail = app.inspect(1)
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        expected = json.loads(line)
    finally:
        sys.set_int_max_str_digits(limit)
    assert detail["payload"] == expected
    assert detail["state"] == State.PROCESSED, detail["last_error"]
    assert not math.isinf(detail["result"]["payload"]["n"])
