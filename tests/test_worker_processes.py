"""Workers as real processes: contention, kill -9, SIGTERM and a second signal.

Every test starts `python -m chronos --db URL worker ...` with `subprocess.Popen`,
using a handler module written into `tmp_path` and steered by environment variables
and marker files. The tests wait for conditions (a marker file, a log line, an exit)
with a deadline, never for a fixed time, and finish by checking the invariants of
the whole database: every event terminal, one storage row per PROCESSED event and
none for any other, and a legal history ending at each event's state.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

from chronos import Chronos
from chronos.db import create_engine, resolve_url
from chronos.schema import event_transitions, events, processed_events
from chronos.states import INITIAL, TERMINAL, TRANSITIONS, State

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RELEASED = "released on shutdown"

HANDLER_MODULE = '''\
"""Handlers for the worker process tests, steered by environment variables."""

from __future__ import annotations

import os
import time
from pathlib import Path

MARKS = Path(os.environ["CT_MARKS"])
_first_call = True


def _append(name: str, line: str) -> None:
    with open(MARKS / name, "a", encoding="utf-8") as handle:
        handle.write(line + "\\n")


def _wait_for_start() -> None:
    start = os.environ.get("CT_START")
    if not start:
        return
    (MARKS / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(start):
        if time.monotonic() > deadline:
            raise SystemExit("the start file never appeared")
        time.sleep(0.005)


def handle(event):
    global _first_call
    if _first_call:
        _first_call = False
        _wait_for_start()
    if event.payload.get("hang") and event.attempt == 1:
        _append("hung", str(event.id))
        time.sleep(600)
    pause = float(os.environ.get("CT_SLEEP", "0"))
    if pause:
        _append("started", str(event.id))
        time.sleep(pause)
    return {"id": event.id, "pid": os.getpid(), "attempt": event.attempt}
'''


@dataclass
class Proc:
    """One worker process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    handles: tuple[IO[bytes], IO[bytes]]

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        finally:
            self.close()
        return code

    def close(self) -> None:
        for handle in self.handles:
            if not handle.closed:
                handle.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8")

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)


Spawn = Callable[..., Proc]


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


@pytest.fixture
def spawn(tmp_path: Path, marks: Path) -> Iterator[Spawn]:
    """Start `chronos worker` processes; any still running at the end are killed."""
    code = tmp_path / "handlers"
    code.mkdir()
    (code / "ct_handlers.py").write_text(HANDLER_MODULE, encoding="utf-8")
    started: list[Proc] = []

    def start(url: str, name: str, *args: str, **env: str) -> Proc:
        environ = {k: v for k, v in os.environ.items() if k != "CHRONOS_DB"}
        path = [str(code), str(REPO), environ.get("PYTHONPATH", "")]
        environ.update(PYTHONPATH=os.pathsep.join(p for p in path if p), CT_MARKS=str(marks))
        environ.update(env)
        out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        out, err = out_path.open("wb"), err_path.open("wb")
        command = [sys.executable, "-m", "chronos", "--db", url, "worker"]
        command += ["--handler", "ct_handlers:handle", "--name", name, "--json", *args]
        popen = subprocess.Popen(command, stdout=out, stderr=err, env=environ, cwd=tmp_path)
        proc = Proc(name, popen, out_path, err_path, (out, err))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
        proc.close()


@pytest.fixture
def accept_many(
    make_event: Callable[..., dict[str, Any]], write_jsonl: Callable[..., Path]
) -> Callable[..., list[int]]:
    names = itertools.count()

    def accept(url: str, objects: list[dict[str, Any]] | int) -> list[int]:
        items = [make_event() for _ in range(objects)] if isinstance(objects, int) else objects
        path = write_jsonl(items, name=f"input-{next(names)}.jsonl")
        with Chronos(url) as app:
            report = app.ingest(str(path))
            assert report.accepted == len(items)
            with app.engine.connect() as conn:
                return list(
                    conn.execute(
                        sa.select(events.c.id)
                        .where(events.c.ingest_run_id == report.run_id)
                        .order_by(events.c.id)
                    ).scalars()
                )

    return accept


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split() if path.exists() else []


@dataclass
class Snapshot:
    """The whole database, read once."""

    rows: dict[int, Any]
    stored: dict[int, Any]
    history: dict[int, list[Any]]

    def state(self, event_id: int) -> str:
        return str(self.rows[event_id].state)

    def details(self, event_id: int) -> list[str]:
        return [h.detail or "" for h in self.history[event_id]]


def _snapshot(url: str) -> Snapshot:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(sa.select(events))}
            stored = {r.event_id: r for r in conn.execute(sa.select(processed_events))}
            history: dict[int, list[Any]] = {}
            query = sa.select(event_transitions).order_by(event_transitions.c.id)
            for row in conn.execute(query):
                history.setdefault(row.event_id, []).append(row)
    finally:
        engine.dispose()
    return Snapshot(rows, stored, history)


def _assert_invariants(url: str) -> Snapshot:
    """Every event terminal, storage exactly for PROCESSED, a legal history to its state."""
    snap = _snapshot(url)
    problems: list[str] = []
    for event_id, row in snap.rows.items():
        state = State(row.state)
        chain = snap.history.get(event_id, [])
        if state not in TERMINAL:
            problems.append(f"{event_id}: left {state}")
        if (state is State.PROCESSED) != (event_id in snap.stored):
            problems.append(f"{event_id}: {state} with storage row={event_id in snap.stored}")
        if not chain or (chain[0].from_state, chain[0].to_state) != (None, INITIAL.value):
            problems.append(f"{event_id}: history does not start with the insert")
            continue
        for before, after in itertools.pairwise(chain):
            step = (State(after.from_state), State(after.to_state))
            if after.from_state != before.to_state or step not in TRANSITIONS:
                problems.append(f"{event_id}: illegal step {step} after {before.to_state}")
        if chain[-1].to_state != state.value:
            problems.append(f"{event_id}: history ends at {chain[-1].to_state}, state {state}")
        claims = sum(h.to_state == State.PROCESSING.value for h in chain)
        releases = sum((h.detail or "").startswith(RELEASED) for h in chain)
        if row.attempts != claims - releases:
            problems.append(f"{event_id}: attempts {row.attempts}, {claims} claims")
        if row.lease_owner is not None:
            problems.append(f"{event_id}: still leased to {row.lease_owner}")
    assert set(snap.stored) <= set(snap.rows)
    assert problems == []
    return snap


# -- contention -----------------------------------------------------------------


def test_four_workers_started_together_process_every_event_exactly_once(
    db_url: str, spawn: Spawn, marks: Path, accept_many: Callable[..., list[int]]
) -> None:
    ids = accept_many(db_url, 4_000)
    start_file = marks / "go"
    workers = [
        spawn(db_url, f"w{n}", "--drain", "--batch", "40", "--quiet", CT_START=str(start_file))
        for n in range(4)
    ]
    _wait_for(
        lambda: len(list(marks.glob("ready-*"))) == 4,
        "all four workers to hold a first batch",
        timeout=60,
    )
    start_file.touch()  # release them together

    codes = [w.wait(timeout=120) for w in workers]
    assert codes == [0, 0, 0, 0], [w.stderr for w in workers]
    reports = [w.report() for w in workers]
    assert sum(r["processed"] for r in reports) == len(ids)
    assert all(r["processed"] > 0 for r in reports)
    assert sum(r["lost_leases"] + r["recovered"] + r["retried"] for r in reports) == 0

    snap = _assert_invariants(db_url)
    assert sorted(snap.rows) == ids
    assert {snap.state(i) for i in ids} == {"PROCESSED"}
    assert {snap.rows[i].attempts for i in ids} == {1}
    assert sorted(snap.stored) == ids
    claims = {i: sum(h.to_state == "PROCESSING" for h in snap.history[i]) for i in ids}
    assert set(claims.values()) == {1}
    by_worker = {w["name"]: w["processed"] for w in reports}
    stored_by = {n: 0 for n in by_worker}
    for row in snap.stored.values():
        stored_by[row.worker] += 1
    assert stored_by == by_worker


# -- crash ----------------------------------------------------------------------


def test_killed_worker_leases_are_recovered_and_its_events_end_processed(
    sqlite_url: str,
    spawn: Spawn,
    marks: Path,
    accept_many: Callable[..., list[int]],
    make_event: Callable[..., dict[str, Any]],
) -> None:
    ids = accept_many(sqlite_url, [make_event(hang=(n == 2)) for n in range(12)])
    victim = spawn(sqlite_url, "victim", "--batch", "8", "--lease", "1")
    _wait_for(lambda: bool(_lines(marks / "hung")), "the victim to hang in its handler")
    assert _lines(marks / "hung") == [str(ids[2])]

    victim.signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    held = _snapshot(sqlite_url)
    assert {i for i in ids if held.state(i) == "PROCESSING"} == set(ids[:8])
    assert {held.rows[i].lease_owner for i in ids[:8]} == {"victim"}
    assert held.stored == {}

    rescuer = spawn(sqlite_url, "rescuer", "--drain", "--lease", "1")
    assert rescuer.wait(timeout=60) == 0, rescuer.stderr
    report = rescuer.report()
    assert (report["recovered"], report["processed"]) == (8, 12)

    snap = _assert_invariants(sqlite_url)
    assert {snap.state(i) for i in ids} == {"PROCESSED"}
    for event_id in ids[:8]:
        assert snap.rows[event_id].attempts == 2
        lost = [h for h in snap.history[event_id] if h.detail == "lease of victim expired"]
        assert [(h.from_state, h.to_state, h.actor) for h in lost] == [
            ("PROCESSING", "FAILED_RETRYABLE", "rescuer")
        ]
    assert {snap.rows[i].attempts for i in ids[8:]} == {1}
    assert {row.worker for row in snap.stored.values()} == {"rescuer"}
    assert _lines(marks / "hung") == [str(ids[2])]


# -- signals --------------------------------------------------------------------


def test_sigterm_finishes_the_current_event_releases_the_rest_and_exits_0(
    sqlite_url: str, spawn: Spawn, marks: Path, accept_many: Callable[..., list[int]]
) -> None:
    ids = accept_many(sqlite_url, 20)
    stopper = spawn(sqlite_url, "stopper", "--batch", "8", CT_SLEEP="0.5")
    _wait_for(lambda: bool(_lines(marks / "started")), "the first event to start")

    stopper.signal(signal.SIGTERM)
    assert stopper.wait(timeout=30) == 0, stopper.stderr
    report = stopper.report()
    assert report["stopped_by_signal"] is True
    assert report["claimed"] == 8
    assert report["processed"] + report["released"] == 8
    assert report["released"] >= 1

    snap = _snapshot(sqlite_url)
    assert not [i for i in ids if snap.state(i) == "PROCESSING"]
    released = [i for i in ids if any(d.startswith(RELEASED) for d in snap.details(i))]
    assert len(released) == report["released"]
    for event_id in released:
        row = snap.rows[event_id]
        assert (row.state, row.attempts, row.lease_owner) == ("FAILED_RETRYABLE", 0, None)
    started = [int(line) for line in _lines(marks / "started")]
    assert started == ids[: report["processed"]]
    assert {snap.state(i) for i in started} == {"PROCESSED"}

    finisher = spawn(sqlite_url, "finisher", "--drain")
    assert finisher.wait(timeout=60) == 0, finisher.stderr
    snap = _assert_invariants(sqlite_url)
    assert {snap.state(i) for i in ids} == {"PROCESSED"}
    assert {snap.rows[i].attempts for i in ids} == {1}
    assert {snap.stored[i].worker for i in released} == {"finisher"}


def test_second_signal_exits_at_once_and_the_leases_are_recovered_later(
    sqlite_url: str, spawn: Spawn, marks: Path, accept_many: Callable[..., list[int]]
) -> None:
    ids = accept_many(sqlite_url, 12)
    victim = spawn(sqlite_url, "victim", "--batch", "8", "--lease", "1", CT_SLEEP="60")
    _wait_for(lambda: bool(_lines(marks / "started")), "the first event to start")

    victim.signal(signal.SIGTERM)
    _wait_for(lambda: "stopping" in victim.stderr, "the worker to log the first signal")
    victim.signal(signal.SIGTERM)
    assert victim.wait(timeout=30) == 130
    assert "stopped at once" in victim.stderr
    assert "Traceback" not in victim.stderr
    held = _snapshot(sqlite_url)
    assert {i for i in ids if held.state(i) == "PROCESSING"} == set(ids[:8])
    assert {held.rows[i].lease_owner for i in ids[:8]} == {"victim"}

    rescuer = spawn(sqlite_url, "rescuer", "--drain", "--lease", "1")
    assert rescuer.wait(timeout=60) == 0, rescuer.stderr
    assert rescuer.report()["recovered"] == 8

    snap = _assert_invariants(sqlite_url)
    assert {snap.state(i) for i in ids} == {"PROCESSED"}
    for event_id in ids[:8]:
        assert "lease of victim expired" in snap.details(event_id)
        assert snap.rows[event_id].attempts == 2
