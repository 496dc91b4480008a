"""The database guards the state machine and the history whatever SQL reaches it.

Every test here writes raw SQL, as a user with a database shell would, on SQLite and
on PostgreSQL, and checks both that the database refuses and that nothing changed.
The last tests check that the trigger DDL frozen in the revisions is the DDL
`chronos.schema` derives from `states.TRANSITIONS` today.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import path_to

from chronos import schema
from chronos.db import create_engine, resolve_url
from chronos.states import INITIAL, TERMINAL, TRANSITIONS, State

ROOT = Path(__file__).resolve().parent.parent
LIVE = [s for s in State if s not in TERMINAL]

Snapshot = dict[str, list[tuple[Any, ...]]]


def _insert_sql(state: str = "RECEIVED") -> sa.TextClause:
    return sa.text(
        "INSERT INTO events (source, key, type, event_time, payload, state, attempts, "
        "available_at, created_at, updated_at, actor, line_no) VALUES ('sensor', :key, "
        f"'reading', 100.0, '{{\"value\": 1}}', '{state}', 0, 100.0, 100.0, 100.0, 'test', 7) "
        "RETURNING id"
    )


def _event_in(engine: sa.Engine, state: State, *, key: str | None = None) -> int:
    """Insert an event with raw SQL and walk it to `state` through legal raw UPDATEs."""
    with engine.begin() as conn:
        event_id: int = conn.execute(_insert_sql(), {"key": key}).scalar_one()
        for n, step in enumerate(path_to(state), start=1):
            conn.execute(
                sa.text(
                    "UPDATE events SET state = :s, actor = 'setup', updated_at = :at WHERE id = :id"
                ),
                {"s": step.value, "at": 100.0 + n, "id": event_id},
            )
    return event_id


def _processed_with_result(engine: sa.Engine) -> int:
    event_id = _event_in(engine, State.PROCESSED)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO processed_events (event_id, result, processed_at, worker) "
                "VALUES (:id, '{\"ok\": true}', 200.0, 'w1')"
            ),
            {"id": event_id},
        )
    return event_id


def _snapshot(engine: sa.Engine) -> Snapshot:
    with engine.connect() as conn:
        return {
            table: [
                tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))
            ]
            for table in ("events", "event_transitions", "processed_events")
        }


def _refused(
    engine: sa.Engine, sql: str | sa.TextClause, params: dict[str, Any], message: str
) -> None:
    """Run `sql` in a transaction of its own; the database must refuse it with `message`."""
    before = _snapshot(engine)
    statement = sa.text(sql) if isinstance(sql, str) else sql
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
        conn.execute(statement, params)
    assert f"chronos: {message}" in str(caught.value.orig)
    assert _snapshot(engine) == before


def _state_of(engine: sa.Engine, event_id: int) -> str:
    with engine.connect() as conn:
        state: str = conn.execute(
            sa.text("SELECT state FROM events WHERE id = :id"), {"id": event_id}
        ).scalar_one()
    return state


@pytest.mark.parametrize("state", [s for s in State if s != INITIAL])
def test_raw_insert_cannot_create_an_event_in_any_state_but_received(
    engine: sa.Engine, state: State
) -> None:
    _refused(engine, _insert_sql(state.value), {"key": "k"}, "events are inserted as RECEIVED")
    assert _snapshot(engine)["events"] == []


def test_raw_insert_of_a_received_event_records_its_first_history_row(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        event_id = conn.execute(_insert_sql(), {"key": "k"}).scalar_one()
    rows = _snapshot(engine)["event_transitions"]
    assert [row[1:6] for row in rows] == [(event_id, None, "RECEIVED", 100.0, "test")]


def test_raw_update_cannot_make_an_illegal_transition(engine: sa.Engine) -> None:
    illegal = [(a, b) for a in LIVE for b in State if a != b and (a, b) not in TRANSITIONS]
    assert illegal
    for a, b in illegal:
        event_id = _event_in(engine, a)
        _refused(
            engine,
            "UPDATE events SET state = :b, actor = 'rogue' WHERE id = :id",
            {"b": b.value, "id": event_id},
            "illegal state transition",
        )
        assert _state_of(engine, event_id) == a.value


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_raw_update_cannot_leave_a_terminal_state(engine: sa.Engine, terminal: State) -> None:
    event_id = _event_in(engine, terminal)
    for target in State:
        if target == terminal:
            continue
        _refused(
            engine,
            "UPDATE events SET state = :b, actor = 'rogue' WHERE id = :id",
            {"b": target.value, "id": event_id},
            "illegal state transition",
        )
    assert _state_of(engine, event_id) == terminal.value


def test_raw_update_cannot_set_an_unknown_state(engine: sa.Engine) -> None:
    event_id = _event_in(engine, State.PROCESSING)
    before = _snapshot(engine)
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET state = 'DONE' WHERE id = :id"), {"id": event_id})
    assert _snapshot(engine) == before


@pytest.mark.parametrize("state", [State.RECEIVED, State.PROCESSING, State.PROCESSED])
def test_raw_update_cannot_change_identity_or_payload_of_an_event(
    engine: sa.Engine, state: State
) -> None:
    event_id = _event_in(engine, state, key=None if state in TERMINAL else "k1")
    changes = {
        "id": "id + 1000",
        "payload": "'{\"value\": 2}'",
        "source": "'other'",
        "key": "'k2'",
        "type": "'forged'",
        "event_time": "event_time + 1",
        "created_at": "created_at + 1",
        "line_no": "line_no + 1",
        "replay_of": "id",
    }
    for column, value in changes.items():
        _refused(
            engine,
            f"UPDATE events SET {column} = {value} WHERE id = :id",
            {"id": event_id},
            "identity and payload of an event never change",
        )


def test_raw_update_cannot_change_a_history_row(engine: sa.Engine) -> None:
    live = _event_in(engine, State.PROCESSING)
    done = _event_in(engine, State.FAILED_TERMINAL)
    for event_id in (live, done):
        for assignment in ("to_state = 'PROCESSED'", "actor = 'forged'", "at = at + 1"):
            _refused(
                engine,
                f"UPDATE event_transitions SET {assignment} WHERE event_id = :id",
                {"id": event_id},
                "history is append-only",
            )


def test_raw_delete_cannot_remove_history_of_a_live_event(engine: sa.Engine) -> None:
    for state in LIVE:
        event_id = _event_in(engine, state)
        _refused(
            engine,
            "DELETE FROM event_transitions WHERE event_id = :id",
            {"id": event_id},
            "history of a live event cannot be deleted",
        )


def test_raw_delete_cannot_remove_a_live_event(engine: sa.Engine) -> None:
    for state in LIVE:
        event_id = _event_in(engine, state)
        # The trigger must refuse before the history's foreign key is even checked.
        _refused(
            engine,
            "DELETE FROM events WHERE id = :id",
            {"id": event_id},
            "only terminal events can be deleted",
        )


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_a_terminal_event_and_its_history_can_be_deleted(
    engine: sa.Engine, terminal: State
) -> None:
    keep = _event_in(engine, State.BUFFERED)
    event_id = _event_in(engine, terminal)
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM event_transitions WHERE event_id = :id"), {"id": event_id}
        )
        conn.execute(sa.text("DELETE FROM events WHERE id = :id"), {"id": event_id})
    after = _snapshot(engine)
    assert [row[0] for row in after["events"]] == [keep]
    assert {row[1] for row in after["event_transitions"]} == {keep}


def test_raw_insert_cannot_store_a_result_for_an_event_that_is_not_processed(
    engine: sa.Engine,
) -> None:
    candidates = [_event_in(engine, state) for state in State if state != State.PROCESSED]
    missing = max(candidates) + 1000
    for event_id in [*candidates, missing]:
        _refused(
            engine,
            "INSERT INTO processed_events (event_id, result, processed_at, worker) "
            "VALUES (:id, '1', 1.0, 'w1')",
            {"id": event_id},
            "storage rows are only for PROCESSED events",
        )
    assert _snapshot(engine)["processed_events"] == []


def test_raw_insert_stores_one_result_for_a_processed_event(engine: sa.Engine) -> None:
    event_id = _processed_with_result(engine)
    assert _snapshot(engine)["processed_events"] == [(event_id, '{"ok": true}', 200.0, "w1")]


def test_raw_update_cannot_change_a_stored_result(engine: sa.Engine) -> None:
    event_id = _processed_with_result(engine)
    for assignment in ("result = '2'", "worker = 'w2'", "processed_at = 0"):
        _refused(
            engine,
            f"UPDATE processed_events SET {assignment} WHERE event_id = :id",
            {"id": event_id},
            "storage rows never change",
        )


def test_upsert_cannot_change_a_stored_result(engine: sa.Engine) -> None:
    event_id = _processed_with_result(engine)
    _refused(
        engine,
        "INSERT INTO processed_events (event_id, result, processed_at, worker) "
        "VALUES (:id, '2', 1.0, 'w2') "
        "ON CONFLICT (event_id) DO UPDATE SET result = excluded.result",
        {"id": event_id},
        "storage rows never change",
    )


def test_upsert_cannot_bring_a_terminal_event_back(engine: sa.Engine) -> None:
    event_id = _event_in(engine, State.PROCESSED)
    _refused(
        engine,
        "INSERT INTO events (id, source, event_time, payload, state, available_at, "
        "created_at, updated_at, actor) VALUES (:id, 's', 1, '{}', 'RECEIVED', 1, 1, 1, 'x') "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
        {"id": event_id},
        "",  # any guard may refuse first: the insert's or the update's
    )


def test_sqlite_insert_or_replace_cannot_bring_a_terminal_event_back(sqlite_url: str) -> None:
    engine = create_engine(resolve_url(sqlite_url))
    try:
        event_id = _event_in(engine, State.PROCESSED)
        _refused(
            engine,
            "INSERT OR REPLACE INTO events (id, source, event_time, payload, state, "
            "available_at, created_at, updated_at, actor) "
            "VALUES (:id, 'reborn', 1, '{}', 'RECEIVED', 1, 1, 1, 'x')",
            {"id": event_id},
            "",
        )
    finally:
        engine.dispose()


def test_sqlite_insert_or_replace_cannot_rewrite_history(sqlite_url: str) -> None:
    engine = create_engine(resolve_url(sqlite_url))
    try:
        event_id = _event_in(engine, State.BUFFERED)
        first = _snapshot(engine)["event_transitions"][0][0]
        _refused(
            engine,
            "INSERT OR REPLACE INTO event_transitions "
            "(id, event_id, from_state, to_state, at, actor, attempt) "
            "VALUES (:first, :id, NULL, 'RECEIVED', 0, 'forged', 0)",
            {"first": first, "id": event_id},
            "",
        )
    finally:
        engine.dispose()


def test_sqlite_insert_or_replace_cannot_change_a_stored_result(sqlite_url: str) -> None:
    engine = create_engine(resolve_url(sqlite_url))
    try:
        event_id = _processed_with_result(engine)
        _refused(
            engine,
            "INSERT OR REPLACE INTO processed_events (event_id, result, processed_at, worker) "
            "VALUES (:id, '2', 1.0, 'w2')",
            {"id": event_id},
            "",
        )
    finally:
        engine.dispose()


def test_every_legal_raw_transition_writes_exactly_one_history_row(engine: sa.Engine) -> None:
    for (a, b), owner in TRANSITIONS.items():
        event_id = _event_in(engine, a)
        before = _snapshot(engine)["event_transitions"]
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE events SET state = :b, actor = :actor, note = :note, "
                    "attempts = attempts + 1, updated_at = 500.0 WHERE id = :id"
                ),
                {"b": b.value, "actor": f"{owner}-raw", "note": f"{a}>{b}", "id": event_id},
            )
        after = _snapshot(engine)["event_transitions"]
        added = [row[1:] for row in after if row not in before]
        assert len(after) == len(before) + 1
        assert added == [(event_id, a.value, b.value, 500.0, f"{owner}-raw", 1, f"{a}>{b}")]


def test_a_same_state_update_writes_no_history(engine: sa.Engine) -> None:
    for state in State:
        event_id = _event_in(engine, state)
        before = _snapshot(engine)["event_transitions"]
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE events SET state = state, actor = 'heartbeat', "
                    "lease_expires_at = 900.0, updated_at = 600.0 WHERE id = :id"
                ),
                {"id": event_id},
            )
            conn.execute(
                sa.text("UPDATE events SET lease_expires_at = 950.0 WHERE id = :id"),
                {"id": event_id},
            )
        assert _snapshot(engine)["event_transitions"] == before
        assert _state_of(engine, event_id) == state.value


def _frozen(name: str) -> list[str]:
    """The trigger DDL the revisions create, in revision order (they only add triggers)."""
    ddl: list[str] = []
    for path in sorted((ROOT / "migrations" / "versions").glob("[0-9]*_*.py")):
        spec = importlib.util.spec_from_file_location(f"chronos_revision_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ddl.extend(getattr(module, name, []))
    return ddl


def test_frozen_sqlite_triggers_match_the_ones_schema_derives() -> None:
    assert _frozen("SQLITE_TRIGGERS") == schema.sqlite_triggers()


def test_frozen_postgresql_triggers_match_the_ones_schema_derives() -> None:
    assert _frozen("POSTGRESQL_TRIGGERS") == schema.postgresql_triggers()


def test_sqlite_insert_or_replace_through_a_producer_key_cannot_delete_a_live_event(
    sqlite_url: str,
) -> None:
    engine = create_engine(resolve_url(sqlite_url))
    try:
        event_id = _event_in(engine, State.BUFFERED, key="k1")
        before = _snapshot(engine)
        with engine.begin() as conn:
            source = conn.execute(
                sa.text("SELECT source FROM events WHERE id = :id"), {"id": event_id}
            ).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT OR REPLACE INTO events (source, key, event_time, payload, state, "
                    "available_at, created_at, updated_at, actor) "
                    "VALUES (:source, 'k1', 1, '{}', 'RECEIVED', 1, 1, 1, 'x')"
                ),
                {"source": source},
            )
        assert _snapshot(engine) == before  # the replacing row was skipped, nothing deleted
    finally:
        engine.dispose()
