"""`chronos check`: clean on a processed database, and each rule names what was broken.

Each test processes a few events, then breaks one thing by hand with raw SQL (first
dropping the trigger that would refuse it, where one does), and asserts the audit
names exactly that rule and that event, and nothing else.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import run_cli

from chronos import Chronos, TerminalError, worker
from chronos.check import RULES
from chronos.handlers import Event
from chronos.schema import events

MakeEvent = Callable[..., dict[str, Any]]
WriteJsonl = Callable[..., Path]

#: The trigger that guards each thing a test breaks, by dialect.
STATE_GUARD = {"sqlite": "events_state_guard", "postgresql": "events_update_guard"}
STATE_HISTORY = {"sqlite": "events_state_history", "postgresql": "events_state_history"}
STORAGE_GUARD = {"sqlite": "processed_events_guard", "postgresql": "processed_events_guard"}
HISTORY_DELETE_GUARD = {
    "sqlite": "event_transitions_delete_guard",
    "postgresql": "event_transitions_delete_guard",
}


def _handle(event: Event) -> dict[str, Any]:
    if event.payload.get("fail"):
        raise TerminalError("this reading is broken")
    return {"value": event.payload["value"]}


@dataclass
class Processed:
    """A database after a drain: which events ended how, and a connection to break it."""

    url: str
    engine: sa.Engine
    processed: list[int]
    failed: list[int]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)

    def drop_trigger(self, names: dict[str, str], table: str) -> None:
        name = names[self.dialect]
        on = f" ON {table}" if self.dialect == "postgresql" else ""
        self.execute(f"DROP TRIGGER {name}{on}")

    def violations(self) -> list[tuple[str, int | None]]:
        with Chronos(self.url) as app:
            report = app.check()
        return [(v.rule, v.event_id) for v in report.violations]


def _ingest_one(
    processed: Processed,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
) -> int:
    """Accept one more event, left BUFFERED; return its id."""
    with Chronos(processed.url) as app:
        report = app.ingest(str(write_jsonl([make_event()], name="late.jsonl")))
        with app.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(events.c.id).where(events.c.ingest_run_id == report.run_id)
                ).scalar_one()
            )


@pytest.fixture
def processed(
    db_url: str,
    engine: sa.Engine,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
) -> Iterator[Processed]:
    """Six events drained by a worker: four PROCESSED, two FAILED_TERMINAL."""
    objects = [make_event(fail=n in (2, 5) or None) for n in range(6)]
    with Chronos(db_url) as app:
        report = app.ingest(str(write_jsonl(objects)))
        app.worker(_handle, max_attempts=1).run(drain=True)
        ids = list(range(1, report.accepted + 1))
        states = {i: app.inspect(i)["state"] for i in ids}
    yield Processed(
        db_url,
        engine,
        processed=[i for i in ids if states[i] == "PROCESSED"],
        failed=[i for i in ids if states[i] == "FAILED_TERMINAL"],
    )


def test_check_passes_on_a_cleanly_processed_database(processed: Processed) -> None:
    with Chronos(processed.url) as app:
        report = app.check()

    assert report.ok, report.violations
    assert (len(processed.processed), len(processed.failed)) == (4, 2)
    assert report.events == 6
    assert report.storage_rows == report.counts["PROCESSED"] == 4
    assert report.counts["FAILED_TERMINAL"] == 2
    assert report.transitions == 6 * 5  # RECEIVED, ACCEPTED, BUFFERED, PROCESSING, the end
    assert report.expired_leases == []


def test_check_names_a_processed_event_whose_storage_row_was_deleted(
    processed: Processed,
) -> None:
    victim = processed.processed[1]
    processed.execute("DELETE FROM processed_events WHERE event_id = :id", id=victim)

    assert processed.violations() == [("storage-processed", victim)]


def test_check_names_an_illegal_step_written_with_the_state_guard_dropped(
    processed: Processed,
) -> None:
    victim = processed.failed[0]
    processed.drop_trigger(STATE_GUARD, "events")
    processed.execute(
        "UPDATE events SET state = 'BUFFERED', actor = 'vandal' WHERE id = :id", id=victim
    )

    assert processed.violations() == [("history-legal", victim)]


def test_check_names_a_state_changed_behind_the_history(processed: Processed) -> None:
    victim = processed.failed[1]
    processed.drop_trigger(STATE_GUARD, "events")
    processed.drop_trigger(STATE_HISTORY, "events")
    processed.execute("UPDATE events SET state = 'BUFFERED' WHERE id = :id", id=victim)

    assert processed.violations() == [("history-current", victim)]


def test_check_names_a_storage_row_for_an_event_that_is_not_processed(
    processed: Processed,
) -> None:
    victim = processed.failed[0]
    processed.drop_trigger(STORAGE_GUARD, "processed_events")
    processed.execute(
        "INSERT INTO processed_events (event_id, result, processed_at, worker) "
        "VALUES (:id, '{}', 0, 'vandal')",
        id=victim,
    )

    assert processed.violations() == [("storage-only-processed", victim)]


def test_check_names_attempts_that_disagree_with_the_history(processed: Processed) -> None:
    victim = processed.processed[0]
    processed.execute("UPDATE events SET attempts = attempts + 1 WHERE id = :id", id=victim)

    assert processed.violations() == [("attempts-history", victim)]


def test_check_names_a_lease_left_on_a_finished_event(processed: Processed) -> None:
    victim = processed.processed[2]
    processed.execute(
        "UPDATE events SET lease_owner = 'ghost', lease_expires_at = 1 WHERE id = :id", id=victim
    )

    assert processed.violations() == [("lease-consistent", victim)]


def test_check_names_a_history_with_a_step_deleted(processed: Processed) -> None:
    victim = processed.processed[3]
    processed.execute(
        "DELETE FROM event_transitions WHERE event_id = :id AND to_state = 'BUFFERED'", id=victim
    )

    assert processed.violations() == [("history-chain", victim)]


def test_check_names_a_history_step_deleted_under_a_live_event(
    processed: Processed,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
) -> None:
    live = _ingest_one(processed, make_event, write_jsonl)
    processed.drop_trigger(HISTORY_DELETE_GUARD, "event_transitions")
    processed.execute(
        "DELETE FROM event_transitions WHERE event_id = :id AND to_state = 'ACCEPTED'", id=live
    )

    assert processed.violations() == [("history-chain", live)]


def test_check_names_an_event_committed_in_accepted(processed: Processed) -> None:
    # Legal steps, written by the triggers, that no Chronos code would stop at.
    with processed.engine.begin() as conn:
        new_id = conn.execute(
            sa.text(
                "INSERT INTO events (source, event_time, payload, state, attempts, "
                "available_at, created_at, updated_at, actor) "
                "VALUES ('hand', 0, '{\"timestamp\": 0}', 'RECEIVED', 0, 0, 0, 0, 'vandal') "
                "RETURNING id"
            )
        ).scalar_one()
        conn.execute(sa.text("UPDATE events SET state = 'ACCEPTED' WHERE id = :id"), {"id": new_id})

    assert processed.violations() == [("not-stuck", new_id)]


def test_check_lists_an_expired_lease_without_calling_it_a_violation(
    processed: Processed,
    make_event: MakeEvent,
    write_jsonl: WriteJsonl,
) -> None:
    late = _ingest_one(processed, make_event, write_jsonl)
    with processed.engine.begin() as conn:
        [claim] = worker.claim(conn, worker="gone", batch=1, lease=5, now=time.time())
    assert claim.id == late

    with Chronos(processed.url, clock=lambda: time.time() + 60) as app:
        report = app.check()

    assert report.ok, report.violations
    assert [(lease["event_id"], lease["lease_owner"]) for lease in report.expired_leases] == [
        (late, "gone")
    ]


def test_check_reports_a_damaged_sqlite_file(
    sqlite_url: str, make_event: MakeEvent, write_jsonl: WriteJsonl
) -> None:
    with Chronos(sqlite_url) as app:
        app.ingest(str(write_jsonl([make_event(), make_event()])))
    # Forget an index behind SQLite's back: its pages stay allocated but unreachable.
    raw = sqlite3.connect(sa.engine.make_url(sqlite_url).database or "", isolation_level=None)
    try:
        raw.execute("PRAGMA writable_schema = ON")
        raw.execute("DELETE FROM sqlite_master WHERE name = 'event_transitions_event'")
        raw.execute("PRAGMA writable_schema = OFF")
    finally:
        raw.close()

    with Chronos(sqlite_url) as app:
        report = app.check()

    assert [(v.rule, v.event_id) for v in report.violations] == [("database-integrity", None)]
    assert "never used" in report.violations[0].detail


def test_every_rule_has_a_description() -> None:
    assert set(RULES) == {
        "database-integrity",
        "history-legal",
        "history-chain",
        "history-current",
        "storage-processed",
        "storage-only-processed",
        "attempts-history",
        "lease-consistent",
        "not-stuck",
    }
    assert all(RULES.values())


@pytest.mark.slow
def test_check_cli_exits_0_on_a_clean_database(sqlite_url: str, tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text('{"timestamp": 1, "value": 1}\n{"timestamp": 2, "fail": true}\n', "utf-8")
    with Chronos(sqlite_url) as app:
        app.ingest(str(path))
        app.worker(_handle, max_attempts=1).run(drain=True)

    plain = run_cli("check", db=sqlite_url)
    as_json = run_cli("check", "--json", db=sqlite_url)

    assert plain.returncode == 0, plain.stderr
    assert "ok: every rule holds" in plain.stdout
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["events"], report["violations"]) == (True, 2, [])


@pytest.mark.slow
def test_check_cli_exits_1_and_lists_the_violation(processed: Processed, db_url: str) -> None:
    victim = processed.processed[0]
    processed.execute("DELETE FROM processed_events WHERE event_id = :id", id=victim)

    plain = run_cli("check", db=db_url)
    as_json = run_cli("check", "--json", db=db_url)

    assert plain.returncode == 1, plain.stderr
    assert "storage-processed" in plain.stdout and str(victim) in plain.stdout
    assert "1 violations" in plain.stdout
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [(v["rule"], v["event_id"]) for v in report["violations"]] == [
        ("storage-processed", victim)
    ]
