"""The worker, driven synchronously in-process: claims, outcomes, leases, stop and drain.

Each test accepts real events into a real database (a SQLite file, and PostgreSQL
where a server is reachable), builds workers with `Chronos(...).worker()` and steps
them with `run_once()` or `run(drain=True)`. Time comes from a fake clock passed as
`clock=`, so backoffs and lease expiry are moved by the test, never waited for. Only
the heartbeat test and the drain-waits-out-a-backoff test use the real clock,
because real waiting is what they are about.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from chronos import Chronos, RetryableError, TerminalError
from chronos import worker as worker_mod
from chronos.db import create_engine, resolve_url
from chronos.errors import UsageError
from chronos.handlers import DEFAULT_HANDLER, Event, load_handler, telemetry
from chronos.runner import Worker
from chronos.schema import events, processed_events

EPOCH_2026 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LEASE = 30.0

Handler = Callable[[Event], Any]
Accept = Callable[..., list[int]]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = EPOCH_2026 + 3_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Crash(BaseException):
    """Stands for the worker process dying inside the handler: nothing gets recorded."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(db_url: str, clock: FakeClock) -> Iterator[Chronos]:
    with Chronos(db_url, clock=clock) as instance:
        yield instance


@pytest.fixture
def accept(make_event: Callable[..., dict[str, Any]], write_jsonl: Callable[..., Path]) -> Accept:
    """Ingest `n` fresh events (or the given objects) into `app`; return their ids."""
    names = itertools.count()

    def ingest(app: Chronos, items: int | list[dict[str, Any]] = 1) -> list[int]:
        objects = [make_event() for _ in range(items)] if isinstance(items, int) else items
        path = write_jsonl(objects, name=f"input-{next(names)}.jsonl")
        report = app.ingest(str(path))
        assert report.accepted == len(objects)
        with app.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(events.c.id)
                    .where(events.c.ingest_run_id == report.run_id)
                    .order_by(events.c.id)
                ).scalars()
            )

    return ingest


def _detail(app: Chronos, event_id: int) -> dict[str, Any]:
    return app.inspect(event_id)


def _steps(app: Chronos, event_id: int) -> list[tuple[str | None, str]]:
    return [(h["from_state"], h["to_state"]) for h in _detail(app, event_id)["history"]]


def _stored(app: Chronos) -> dict[int, tuple[Any, str]]:
    """Every storage row: event id -> (decoded result, worker)."""
    with app.engine.connect() as conn:
        rows = conn.execute(sa.select(processed_events)).all()
    return {
        row.event_id: (None if row.result is None else json.loads(row.result), row.worker)
        for row in rows
    }


def _states(app: Chronos) -> dict[int, str]:
    with app.engine.connect() as conn:
        return {row.id: row.state for row in conn.execute(sa.select(events.c.id, events.c.state))}


def _recording(calls: list[tuple[int, int]], result: Any = None) -> Handler:
    def handle(event: Event) -> Any:
        calls.append((event.id, event.attempt))
        return {"id": event.id} if result is None else result

    return handle


def _crash(event: Event) -> None:
    raise Crash


# -- claiming -------------------------------------------------------------------


def test_claims_oldest_id_first_whatever_the_event_time(
    app: Chronos, accept: Accept, make_event: Callable[..., dict[str, Any]]
) -> None:
    late_first = [make_event(timestamp=f"2026-01-0{9 - n}T00:00:00Z") for n in range(5)]
    ids = accept(app, late_first)
    calls: list[tuple[int, int]] = []
    worker = app.worker(_recording(calls), name="w", batch=2)

    assert [worker.run_once() for _ in range(4)] == [2, 2, 1, 0]
    assert [event_id for event_id, _ in calls] == ids
    assert sorted(ids) == ids


def test_claim_skips_events_until_their_available_at(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    a, b, c = accept(app, 3)
    calls: list[tuple[int, int]] = []

    def fail_a_once(event: Event) -> str:
        calls.append((event.id, event.attempt))
        if event.id == a and event.attempt == 1:
            raise RetryableError("not yet")
        return "ok"

    worker = app.worker(fail_a_once, name="w", batch=1, backoff=10.0)
    failed_at = clock()
    assert worker.run_once() == 1
    retry_at = _detail(app, a)["available_at"]
    assert failed_at + 5.0 <= retry_at <= failed_at + 10.0

    assert worker.run_once() == 1  # b: a is not available yet
    clock.now = retry_at - 0.001
    assert worker.run_once() == 1  # c
    assert worker.run_once() == 0  # only a is left, a millisecond early
    clock.now = retry_at
    assert worker.run_once() == 1  # available_at <= now: due
    assert calls == [(a, 1), (b, 1), (c, 1), (a, 2)]


def test_worker_does_not_claim_an_event_another_worker_holds(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    with pytest.raises(Crash):
        app.worker(_crash, name="A", lease=LEASE).run_once()
    calls: list[tuple[int, int]] = []
    other = app.worker(_recording(calls), name="B", lease=LEASE)

    clock.advance(LEASE - 0.1)
    assert other.run_once() == 0
    detail = _detail(app, event_id)
    assert (detail["state"], detail["lease_owner"]) == ("PROCESSING", "A")
    assert calls == []
    assert other.report.recovered == 0


# -- outcomes -------------------------------------------------------------------


def test_retryable_failure_then_success_records_every_step(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    attempts: list[int] = []

    def flaky(event: Event) -> dict[str, Any]:
        attempts.append(event.attempt)
        if event.attempt == 1:
            raise RetryableError("flaky link")
        return {"ok": event.payload["value"]}

    worker = app.worker(flaky, name="w1", backoff=2.0)
    assert worker.run_once() == 1
    assert _detail(app, event_id)["state"] == "FAILED_RETRYABLE"
    assert worker.run_once() == 0  # backing off
    clock.advance(2.0)
    assert worker.run_once() == 1

    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("PROCESSED", 2)
    assert (detail["lease_owner"], detail["lease_expires_at"]) == (None, None)
    assert attempts == [1, 2]
    history = detail["history"]
    assert [(h["from_state"], h["to_state"]) for h in history] == [
        (None, "RECEIVED"),
        ("RECEIVED", "ACCEPTED"),
        ("ACCEPTED", "BUFFERED"),
        ("BUFFERED", "PROCESSING"),
        ("PROCESSING", "FAILED_RETRYABLE"),
        ("FAILED_RETRYABLE", "PROCESSING"),
        ("PROCESSING", "PROCESSED"),
    ]
    assert [h["attempt"] for h in history[3:]] == [1, 1, 2, 2]
    assert {h["actor"] for h in history[3:]} == {"w1"}
    assert history[4]["detail"] == "RetryableError: flaky link"
    assert history[5]["detail"] == "retry after backoff"
    assert detail["result"] == {"ok": detail["payload"]["value"]}
    assert worker.report.retried == 1
    assert worker.report.processed == 1


def test_retries_until_attempts_are_exhausted_then_fails_terminal(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    attempts: list[int] = []

    def offline(event: Event) -> None:
        attempts.append(event.attempt)
        raise RetryableError("sensor offline")

    worker = app.worker(offline, name="w", max_attempts=3, backoff=1.0)
    for _ in range(6):
        worker.run_once()
        clock.advance(60.0)

    detail = _detail(app, event_id)
    assert attempts == [1, 2, 3]
    assert (detail["state"], detail["attempts"]) == ("FAILED_TERMINAL", 3)
    assert "RetryableError: sensor offline" in detail["last_error"]
    last = detail["history"][-1]
    assert (last["from_state"], last["to_state"]) == ("PROCESSING", "FAILED_TERMINAL")
    assert last["detail"] == "attempts exhausted (3): RetryableError: sensor offline"
    assert _steps(app, event_id).count(("PROCESSING", "FAILED_RETRYABLE")) == 2
    assert _stored(app) == {}
    assert (worker.report.retried, worker.report.failed_terminal) == (2, 1)


def test_terminal_error_fails_for_good_on_the_first_attempt(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    calls: list[int] = []

    def corrupt(event: Event) -> None:
        calls.append(event.attempt)
        raise TerminalError("corrupt frame")

    worker = app.worker(corrupt, name="w", max_attempts=5)
    assert worker.run_once() == 1
    clock.advance(3_600.0)
    assert worker.run_once() == 0

    detail = _detail(app, event_id)
    assert calls == [1]
    assert (detail["state"], detail["attempts"]) == ("FAILED_TERMINAL", 1)
    assert "TerminalError: corrupt frame" in detail["last_error"]
    assert detail["history"][-1]["detail"] == "TerminalError: corrupt frame"
    assert worker.report.failed_terminal == 1
    assert _stored(app) == {}


class SensorGlitch(Exception):
    """A handler's own exception type."""


@pytest.mark.parametrize(
    ("error", "summary"),
    [
        (SensorGlitch("bad reading"), "SensorGlitch: bad reading"),
        (KeyError("missing"), "KeyError: 'missing'"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    ],
)
def test_any_other_exception_is_retryable_and_recorded_with_its_type(
    app: Chronos, accept: Accept, error: Exception, summary: str
) -> None:
    [event_id] = accept(app, 1)

    def broken(event: Event) -> None:
        raise error

    worker = app.worker(broken, name="w")
    assert worker.run_once() == 1

    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("FAILED_RETRYABLE", 1)
    assert detail["last_error"].startswith("Traceback")
    assert summary in detail["last_error"]
    assert detail["history"][-1]["detail"] == summary
    assert worker.report.retried == 1


@pytest.mark.parametrize(
    "result",
    [object(), {"reading": math.nan}, {"tags": {"a", "b"}}, b"raw bytes"],
    ids=["object", "nan", "set", "bytes"],
)
def test_unserialisable_result_fails_terminal_with_a_clear_reason(
    app: Chronos, clock: FakeClock, accept: Accept, result: Any
) -> None:
    [event_id] = accept(app, 1)
    calls: list[tuple[int, int]] = []
    worker = app.worker(_recording(calls, result), name="w", max_attempts=5)
    assert worker.run_once() == 1
    clock.advance(3_600.0)
    assert worker.run_once() == 0

    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("FAILED_TERMINAL", 1)
    assert "result is not JSON-serialisable" in detail["last_error"]
    assert "result is not JSON-serialisable" in detail["history"][-1]["detail"]
    assert len(calls) == 1
    assert _stored(app) == {}


def test_result_is_stored_once_with_the_handlers_return_value(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    ids = accept(app, 3)

    def enrich(event: Event) -> dict[str, Any]:
        return {"value": event.payload["value"], "unit": "µs", "nested": [1, {"ok": True}]}

    worker = app.worker(enrich, name="store-w", batch=2)
    worker.run(drain=True)

    stored = _stored(app)
    assert sorted(stored) == ids
    for event_id in ids:
        detail = _detail(app, event_id)
        expected = {"value": detail["payload"]["value"], "unit": "µs", "nested": [1, {"ok": True}]}
        assert stored[event_id] == (expected, "store-w")
        assert detail["result"] == expected
        assert detail["processed_at"] == clock()
        assert _steps(app, event_id).count(("PROCESSING", "PROCESSED")) == 1
    assert worker.report.processed == 3


def test_none_result_is_processed_with_a_null_result(app: Chronos, accept: Accept) -> None:
    [event_id] = accept(app, 1)

    def nothing(event: Event) -> None:
        return None

    app.worker(nothing, name="w").run_once()

    assert _detail(app, event_id)["state"] == "PROCESSED"
    assert _stored(app) == {event_id: (None, "w")}


# -- leases ---------------------------------------------------------------------


def test_expired_lease_is_recovered_by_another_worker_naming_the_owner(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    dead = app.worker(_crash, name="A", lease=LEASE)
    with pytest.raises(Crash):
        dead.run_once()
    claimed_at = clock()
    detail = _detail(app, event_id)
    assert (detail["state"], detail["lease_owner"]) == ("PROCESSING", "A")
    assert detail["lease_expires_at"] == claimed_at + LEASE

    calls: list[tuple[int, int]] = []
    rescuer = app.worker(_recording(calls), name="B", lease=LEASE)
    clock.advance(LEASE + 0.5)
    assert rescuer.run_once() == 1

    assert rescuer.report.recovered == 1
    assert calls == [(event_id, 2)]
    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("PROCESSED", 2)
    recovery = [h for h in detail["history"] if h["detail"] == "lease of A expired"]
    assert len(recovery) == 1
    assert (recovery[0]["from_state"], recovery[0]["to_state"]) == (
        "PROCESSING",
        "FAILED_RETRYABLE",
    )
    assert (recovery[0]["actor"], recovery[0]["attempt"]) == ("B", 1)
    assert _stored(app) == {event_id: ({"id": event_id}, "B")}


def test_expired_lease_with_attempts_spent_fails_terminal(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    with pytest.raises(Crash):
        app.worker(_crash, name="A", lease=LEASE, max_attempts=1).run_once()
    calls: list[tuple[int, int]] = []
    rescuer = app.worker(_recording(calls), name="B", lease=LEASE, max_attempts=1)
    clock.advance(LEASE + 0.5)
    assert rescuer.run_once() == 0

    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("FAILED_TERMINAL", 1)
    assert detail["last_error"] == "lease of A expired"
    assert detail["history"][-1]["detail"] == "attempts exhausted: lease of A expired"
    assert detail["history"][-1]["actor"] == "B"
    assert calls == []
    assert _stored(app) == {}


def test_outcome_after_a_lost_lease_is_refused_and_nothing_is_stored(
    app: Chronos, db_url: str, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    thief = create_engine(resolve_url(db_url))
    stolen: list[int] = []

    def outlived_its_lease(event: Event) -> dict[str, str]:
        clock.advance(LEASE + 1.0)
        with thief.begin() as conn:  # another worker, with its own connections
            recovered = worker_mod.recover_expired(
                conn, worker="B", max_attempts=5, retry_at=clock(), now=clock()
            )
        stolen.extend(r.id for r in recovered)
        return {"by": "A"}

    try:
        slow = app.worker(outlived_its_lease, name="A", lease=LEASE)
        assert slow.run_once() == 1
    finally:
        thief.dispose()

    assert stolen == [event_id]
    assert (slow.report.lost_leases, slow.report.lost) == (1, [event_id])
    assert slow.report.processed == 0
    detail = _detail(app, event_id)
    assert (detail["state"], detail["lease_owner"], detail["attempts"]) == (
        "FAILED_RETRYABLE",
        None,
        1,
    )
    assert detail["history"][-1]["detail"] == "lease of A expired"
    assert ("PROCESSING", "PROCESSED") not in _steps(app, event_id)
    assert _stored(app) == {}

    calls: list[tuple[int, int]] = []
    later = app.worker(_recording(calls, {"by": "C"}), name="C")
    later.run(drain=True)
    assert calls == [(event_id, 2)]
    assert _detail(app, event_id)["state"] == "PROCESSED"
    assert _stored(app) == {event_id: ({"by": "C"}, "C")}


def test_outcome_is_refused_while_another_worker_holds_the_new_lease(
    app: Chronos, db_url: str, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    thief = create_engine(resolve_url(db_url))

    def outlived_its_lease(event: Event) -> str:
        clock.advance(LEASE + 1.0)
        with thief.begin() as conn:  # B recovers the event and claims it again
            worker_mod.recover_expired(
                conn, worker="B", max_attempts=5, retry_at=clock(), now=clock()
            )
            taken = worker_mod.claim(conn, worker="B", batch=1, lease=LEASE, now=clock())
        assert [c.id for c in taken] == [event_id]
        return "A's result"

    try:
        slow = app.worker(outlived_its_lease, name="A", lease=LEASE)
        assert slow.run_once() == 1
    finally:
        thief.dispose()

    assert slow.report.lost_leases == 1
    detail = _detail(app, event_id)
    assert (detail["state"], detail["lease_owner"], detail["attempts"]) == ("PROCESSING", "B", 2)
    assert _stored(app) == {}

    clock.advance(LEASE + 1.0)  # B never finishes: its lease expires in turn
    calls: list[tuple[int, int]] = []
    app.worker(_recording(calls), name="C").run(drain=True)
    assert calls == [(event_id, 3)]
    assert _stored(app) == {event_id: ({"id": event_id}, "C")}


def test_worker_that_took_over_a_lost_lease_stores_the_only_result(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    [event_id] = accept(app, 1)
    calls: list[tuple[int, int]] = []
    rescuer = app.worker(_recording(calls, {"by": "B"}), name="B", lease=LEASE)

    def outlived_its_lease(event: Event) -> dict[str, str]:
        clock.advance(LEASE + 1.0)
        assert rescuer.run_once() == 1  # recovers, claims and finishes the event
        return {"by": "A"}

    slow = app.worker(outlived_its_lease, name="A", lease=LEASE)
    assert slow.run_once() == 1

    assert calls == [(event_id, 2)]
    assert slow.report.lost_leases == 1
    assert rescuer.report.processed == 1
    detail = _detail(app, event_id)
    assert (detail["state"], detail["attempts"]) == ("PROCESSED", 2)
    assert _stored(app) == {event_id: ({"by": "B"}, "B")}
    assert _steps(app, event_id).count(("PROCESSING", "PROCESSED")) == 1


def test_heartbeat_keeps_a_slow_handler_from_running_twice(db_url: str, accept: Accept) -> None:
    """Real time: lease 0.3 s, handler 1.0 s, a rival trying to recover all along."""
    with Chronos(db_url) as app:
        [event_id] = accept(app, 1)
        rival_calls: list[tuple[int, int]] = []
        rival = app.worker(_recording(rival_calls), name="rival", lease=0.3)
        slow_calls: list[int] = []
        rival_tries = 0

        def slow(event: Event) -> str:
            nonlocal rival_tries
            slow_calls.append(event.attempt)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                rival.run_once()
                rival_tries += 1
                time.sleep(0.02)
            return "done"

        worker = app.worker(slow, name="slow", lease=0.3)
        assert worker.run_once() == 1

        assert rival_tries > 10
        assert slow_calls == [1]
        assert rival_calls == []
        assert rival.report.recovered == 0
        assert worker.report.lost_leases == 0
        detail = _detail(app, event_id)
        assert (detail["state"], detail["attempts"]) == ("PROCESSED", 1)
        steps = _steps(app, event_id)
        assert steps.count(("BUFFERED", "PROCESSING")) == 1
        assert all(a != b for a, b in steps)  # renewals are not transitions
        assert _stored(app) == {event_id: ("done", "slow")}


def test_a_claim_the_heartbeat_found_lost_is_not_run(db_url: str, accept: Accept) -> None:
    """Real time: the first handler steals the second claim's lease and waits until
    the heartbeat has noticed; the second handler must then never run."""
    import logging

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    collector = Collect()
    logging.getLogger("chronos.worker").addHandler(collector)
    thief = create_engine(resolve_url(db_url))
    try:
        with Chronos(db_url) as app:
            first, second = accept(app, 2)
            calls: list[int] = []

            def handler(event: Event) -> str:
                calls.append(event.id)
                if event.id == first:
                    with thief.begin() as conn:
                        conn.execute(
                            sa.update(events)
                            .where(events.c.id == second)
                            .values(lease_owner="thief")
                        )
                    deadline = time.monotonic() + 10
                    while not any(f"event={second} lease lost" in r for r in records):
                        assert time.monotonic() < deadline, "the heartbeat never noticed"
                        time.sleep(0.01)
                return "done"

            worker = app.worker(handler, name="holder", lease=0.3)
            assert worker.run_once() == 2

            assert calls == [first]
            assert worker.report.processed == 1
            assert worker.report.lost == [second]
            assert _stored(app) == {first: ("done", "holder")}
            assert _detail(app, second)["lease_owner"] == "thief"
    finally:
        logging.getLogger("chronos.worker").removeHandler(collector)
        thief.dispose()


# -- stopping -------------------------------------------------------------------


def test_graceful_stop_releases_the_rest_of_the_batch(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    first, *rest = accept(app, 4)
    calls: list[int] = []
    holder: list[Worker] = []

    def stop_after_first(event: Event) -> str:
        calls.append(event.id)
        holder[0].stop()
        return "done"

    worker = app.worker(stop_after_first, name="A", batch=4)
    holder.append(worker)
    assert worker.run_once() == 4

    assert calls == [first]
    assert (worker.report.processed, worker.report.released) == (1, 3)
    assert _detail(app, first)["state"] == "PROCESSED"
    for event_id in rest:
        detail = _detail(app, event_id)
        assert (detail["state"], detail["attempts"], detail["lease_owner"]) == (
            "FAILED_RETRYABLE",
            0,
            None,
        )
        assert detail["available_at"] == clock()
        last = detail["history"][-1]
        assert last["detail"].startswith("released on shutdown")
        assert (last["actor"], last["attempt"]) == ("A", 0)

    assert worker.run(drain=True).claimed == 4  # a stopped worker claims nothing new

    later_calls: list[tuple[int, int]] = []
    app.worker(_recording(later_calls), name="B", batch=4).run(drain=True)
    assert later_calls == [(event_id, 1) for event_id in rest]
    assert set(_states(app).values()) == {"PROCESSED"}
    assert sorted(_stored(app)) == [first, *rest]


def test_graceful_stop_after_the_leases_were_lost_counts_them_instead_of_failing(
    app: Chronos, db_url: str, clock: FakeClock, accept: Accept
) -> None:
    first, second = accept(app, 2)
    thief = create_engine(resolve_url(db_url))
    holder: list[Worker] = []

    def outlived_its_lease_then_stop(event: Event) -> str:
        clock.advance(LEASE + 1.0)
        with thief.begin() as conn:
            worker_mod.recover_expired(
                conn, worker="B", max_attempts=5, retry_at=clock(), now=clock()
            )
        holder[0].stop()
        return "done"

    try:
        worker = app.worker(outlived_its_lease_then_stop, name="A", batch=2, lease=LEASE)
        holder.append(worker)
        assert worker.run_once() == 2
    finally:
        thief.dispose()

    assert (worker.report.lost_leases, worker.report.released) == (2, 0)
    assert sorted(worker.report.lost) == [first, second]
    assert set(_states(app).values()) == {"FAILED_RETRYABLE"}


def test_run_stops_after_max_events(app: Chronos, accept: Accept) -> None:
    ids = accept(app, 10)
    calls: list[tuple[int, int]] = []
    report = app.worker(_recording(calls), name="w", batch=4).run(max_events=6)

    assert (report.claimed, report.processed) == (6, 6)
    assert [event_id for event_id, _ in calls] == ids[:6]
    states = _states(app)
    assert [states[i] for i in ids] == ["PROCESSED"] * 6 + ["BUFFERED"] * 4


def test_drain_returns_at_once_when_nothing_is_waiting(app: Chronos) -> None:
    started = time.monotonic()
    report = app.worker(_recording([]), name="w", idle_max=5.0).run(drain=True)
    assert report.claimed == 0
    assert time.monotonic() - started < 2.0


def test_drain_waits_out_backoffs_until_every_event_is_terminal(
    db_url: str, accept: Accept, make_event: Callable[..., dict[str, Any]]
) -> None:
    """Real time with a 20 ms backoff: drain sleeps until the next retry is due."""
    kinds = ["ok", "flaky", "offline", "corrupt", "ok"]
    with Chronos(db_url) as app:
        ids = accept(app, [make_event(kind=kind) for kind in kinds])
        by_kind = dict(zip(kinds, ids, strict=False))

        def handle(event: Event) -> str:
            kind = str(event.payload["kind"])
            if kind == "flaky" and event.attempt < 3:
                raise RetryableError("flaky")
            if kind == "offline":
                raise RetryableError("offline")
            if kind == "corrupt":
                raise TerminalError("corrupt")
            return kind

        started = time.monotonic()
        report = app.worker(handle, name="w", max_attempts=3, backoff=0.02, idle_max=0.2).run(
            drain=True
        )
        elapsed = time.monotonic() - started

        assert (report.processed, report.failed_terminal, report.retried) == (3, 2, 4)
        assert elapsed < 10.0
        states = _states(app)
        assert {states[i] for i in ids} <= {"PROCESSED", "FAILED_TERMINAL"}
        assert _detail(app, by_kind["flaky"])["attempts"] == 3
        assert states[by_kind["flaky"]] == "PROCESSED"
        offline = _detail(app, by_kind["offline"])
        assert (offline["state"], offline["attempts"]) == ("FAILED_TERMINAL", 3)
        assert _detail(app, by_kind["corrupt"])["attempts"] == 1


def test_drain_recovers_the_expired_leases_of_a_dead_worker(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    ids = accept(app, 3)
    with pytest.raises(Crash):
        app.worker(_crash, name="dead", batch=2, lease=LEASE).run_once()
    clock.advance(LEASE + 1.0)

    calls: list[tuple[int, int]] = []
    report = app.worker(_recording(calls), name="B").run(drain=True)

    assert report.recovered == 2
    assert sorted(calls) == [(ids[0], 2), (ids[1], 2), (ids[2], 1)]
    assert set(_states(app).values()) == {"PROCESSED"}
    for event_id in ids[:2]:
        assert "lease of dead expired" in [h["detail"] for h in _detail(app, event_id)["history"]]


@pytest.mark.parametrize(("option", "value"), [("batch", 0), ("lease", 0.0), ("lease", -1.0)])
def test_worker_refuses_nonsense_settings(app: Chronos, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        app.worker(_recording([]), **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("lease", [math.nan, math.inf])
def test_worker_refuses_a_lease_that_is_not_finite(sqlite_url: str, lease: float) -> None:
    with Chronos(sqlite_url) as app, pytest.raises(ValueError, match="lease"):
        app.worker(_recording([]), lease=lease)


# -- handlers -------------------------------------------------------------------


def test_default_handler_normalises_the_time_and_measures_the_lag(
    app: Chronos, clock: FakeClock, accept: Accept
) -> None:
    original = {
        "timestamp": "2026-01-01T02:00:00+02:00",
        "source": "probe",
        "id": "p-1",
        "type": "temperature",
        "celsius": 21.5,
        "tags": ["a", "b"],
    }
    clock.now = EPOCH_2026 + 90.25  # accepted 90.25 s after the event happened
    [event_id] = accept(app, [original])
    clock.advance(500.0)  # processing later does not change the lag
    app.worker(name="w").run_once()

    assert _stored(app) == {
        event_id: (
            {
                "event_time_utc": "2026-01-01T00:00:00Z",
                "lag_seconds": 90.25,
                "source": "probe",
                "type": "temperature",
                "payload": original,
            },
            "w",
        )
    }


def test_telemetry_reports_a_negative_lag_for_an_event_from_the_future() -> None:
    happened = dt.datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    event = Event(
        id=1,
        source="s",
        key=None,
        type=None,
        event_time=happened,
        accepted_at=happened - dt.timedelta(seconds=2),
        payload={"timestamp": 0, "x": 1},
        attempt=1,
    )
    assert telemetry(event) == {
        "event_time_utc": "2026-03-01T12:00:00.250000Z",
        "lag_seconds": -2.0,
        "source": "s",
        "type": None,
        "payload": {"timestamp": 0, "x": 1},
    }


def test_load_handler_imports_module_function() -> None:
    assert load_handler(DEFAULT_HANDLER) is telemetry


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("telemetry", "module:function"),
        (":handle", "module:function"),
        ("chronos.handlers:", "module:function"),
        ("", "module:function"),
        ("chronos_no_such_module_x:handle", "cannot import"),
        ("chronos.handlers:no_such_function", "no callable"),
        ("chronos.handlers:DEFAULT_HANDLER", "no callable"),
    ],
)
def test_load_handler_refuses_a_bad_spec_with_a_usage_error(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_handler(spec)


def test_worker_with_a_bad_handler_spec_raises_a_usage_error(sqlite_url: str) -> None:
    with Chronos(sqlite_url) as app, pytest.raises(UsageError, match="cannot import"):
        app.worker("chronos_no_such_module_x:handle")


@pytest.mark.parametrize(
    "source", ["def handle(event:\n", "raise RuntimeError('no config')\n"], ids=["syntax", "raises"]
)
def test_load_handler_turns_a_broken_module_into_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    name = f"chronos_broken_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(UsageError, match="cannot import"):
            load_handler(f"{name}:handle")
    finally:
        sys.modules.pop(name, None)


def test_handler_sees_the_event_as_accepted(
    app: Chronos, clock: FakeClock, accept: Accept, make_event: Callable[..., dict[str, Any]]
) -> None:
    original = make_event(timestamp=EPOCH_2026 + 5, id=77, type=None, reading=[1, 2])
    [event_id] = accept(app, [original])
    seen: list[Event] = []

    def look(event: Event) -> None:
        seen.append(event)

    app.worker(look, name="w").run_once()

    [event] = seen
    assert (event.id, event.source, event.key, event.type, event.attempt) == (
        event_id,
        "sensor",
        "77",
        None,
        1,
    )
    assert event.event_time == dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    assert event.accepted_at.timestamp() == clock()
    assert event.payload == original
