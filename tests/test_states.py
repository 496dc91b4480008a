"""The state machine: the owner path follows `states.TRANSITIONS` and nothing else.

A property test drives random transitions through `chronos.db.transition` (the one
guarded UPDATE every owner module calls) on a real SQLite file and checks each
outcome, the states and the recorded history against a model built from the table.
A plain test then asks the database itself, on SQLite and PostgreSQL, which raw
state changes it lets through.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import path_to
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chronos import Chronos, errors, ingestion
from chronos.db import create_engine, resolve_url, transition
from chronos.schema import event_transitions, events
from chronos.states import BUFFER, INGESTION, INITIAL, TERMINAL, TRANSITIONS, WORKER, State

N_EVENTS = 3
OWNERS = sorted({*TRANSITIONS.values(), INGESTION, BUFFER, WORKER, "storage"})
START = 1_000.0

Expected = tuple[State | None, State, str, float]  # (from, to, actor, at) of one history row


@contextmanager
def _fresh_engine() -> Iterator[sa.Engine]:
    """A migrated SQLite file of its own: fixtures do not reset between examples."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'chronos.db'}"
        Chronos(url).migrate()
        engine = create_engine(resolve_url(url))
        try:
            yield engine
        finally:
            engine.dispose()


def _received_rows(count: int) -> list[dict[str, object]]:
    return [
        {
            "source": "sensor",
            "key": f"k{n}",
            "type": "reading",
            "event_time": START + n,
            "payload": f'{{"value": {n}}}',
            "state": INITIAL.value,
            "attempts": 0,
            "available_at": START,
            "created_at": START,
            "updated_at": START,
            "actor": ingestion.ACTOR,
        }
        for n in range(count)
    ]


def _states(engine: sa.Engine) -> dict[int, State]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.id, events.c.state)).all()
    return {row.id: State(row.state) for row in rows}


def _history(engine: sa.Engine) -> dict[int, list[Expected]]:
    query = sa.select(
        event_transitions.c.event_id,
        event_transitions.c.from_state,
        event_transitions.c.to_state,
        event_transitions.c.actor,
        event_transitions.c.at,
    ).order_by(event_transitions.c.id)
    found: dict[int, list[Expected]] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            source = State(row.from_state) if row.from_state is not None else None
            found.setdefault(row.event_id, []).append(
                (source, State(row.to_state), row.actor, row.at)
            )
    return found


def _move(
    engine: sa.Engine,
    ids: list[int],
    source: State,
    target: State,
    *,
    owner: str,
    actor: str,
    now: float,
) -> None:
    with engine.begin() as conn:
        transition(conn, ids, source, target, owner=owner, actor=actor, now=now)


def _assert_chain(history: list[Expected], current: State) -> None:
    assert history[0][:2] == (None, State.RECEIVED)
    for before, after in itertools.pairwise(history):
        assert after[0] == before[1], history
        assert after[0] != after[1], history
    assert history[-1][1] == current


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_transitions_succeed_exactly_when_the_table_allows_them(
    data: st.DataObject,
) -> None:
    with _fresh_engine() as engine:
        with engine.begin() as conn:
            ids = ingestion.receive(conn, _received_rows(N_EVENTS))
        assert len(ids) == N_EVENTS
        model = dict.fromkeys(ids, State.RECEIVED)
        expected: dict[int, list[Expected]] = {
            i: [(None, State.RECEIVED, ingestion.ACTOR, START)] for i in ids
        }
        terminal_seen: dict[int, State] = {}

        for step in range(data.draw(st.integers(1, 40), label="steps")):
            now = START + 1 + step
            chosen = data.draw(
                st.lists(st.sampled_from(ids), min_size=1, max_size=1, unique=True)
                | st.lists(st.sampled_from(ids), min_size=1, max_size=N_EVENTS, unique=True),
                label="ids",
            )
            current = model[chosen[0]]
            legal = [(a, b, o) for (a, b), o in TRANSITIONS.items() if a == current]
            follow_table = data.draw(st.sampled_from([True, True, True, False]), label="legal")
            source, target, owner = data.draw(
                st.sampled_from(legal)
                if legal and follow_table
                else st.tuples(
                    st.sampled_from(State), st.sampled_from(State), st.sampled_from(OWNERS)
                ),
                label="move",
            )
            actor = f"{owner}-{step}"

            if TRANSITIONS.get((source, target)) != owner:
                with pytest.raises(ValueError, match="does not own"):
                    _move(engine, chosen, source, target, owner=owner, actor=actor, now=now)
            elif any(model[i] != source for i in chosen):
                with pytest.raises(errors.GuardFailed):
                    _move(engine, chosen, source, target, owner=owner, actor=actor, now=now)
            else:
                _move(engine, chosen, source, target, owner=owner, actor=actor, now=now)
                event(f"{source} -> {target}")
                for i in chosen:
                    model[i] = target
                    expected[i].append((source, target, actor, now))

            found = _states(engine)
            assert found == model
            for i, state in terminal_seen.items():
                assert found[i] == state, f"event {i} left terminal state {state}"
            terminal_seen.update({i: s for i, s in found.items() if s in TERMINAL})

        history = _history(engine)
        assert history == expected
        for i in ids:
            _assert_chain(history[i], model[i])


def _raw_event_in(engine: sa.Engine, state: State) -> int:
    """Insert an event with raw SQL and walk it to `state` through legal raw UPDATEs."""
    with engine.begin() as conn:
        event_id: int = conn.execute(
            sa.text(
                "INSERT INTO events (source, event_time, payload, state, available_at, "
                "created_at, updated_at, actor) VALUES ('sensor', 1, '{}', 'RECEIVED', 1, 1, 1, "
                "'test') RETURNING id"
            )
        ).scalar_one()
        for step in path_to(state):
            conn.execute(
                sa.text("UPDATE events SET state = :s WHERE id = :id"),
                {"s": step.value, "id": event_id},
            )
    return event_id


def test_database_accepts_a_raw_state_update_exactly_when_the_table_allows_it(
    engine: sa.Engine,
) -> None:
    wrong: list[str] = []
    for a in State:
        for b in State:
            event_id = _raw_event_in(engine, a)
            try:
                with engine.begin() as conn:
                    conn.execute(
                        sa.text("UPDATE events SET state = :b WHERE id = :id"),
                        {"b": b.value, "id": event_id},
                    )
                allowed = True
            except sa.exc.DBAPIError as exc:
                assert "chronos: illegal state transition" in str(exc.orig)
                allowed = False
            with engine.connect() as conn:
                now_in = conn.execute(
                    sa.text("SELECT state FROM events WHERE id = :id"), {"id": event_id}
                ).scalar_one()
            legal = (a, b) in TRANSITIONS or a == b
            if allowed != legal or now_in != (b if allowed else a).value:
                wrong.append(f"{a} -> {b}: allowed={allowed}, legal={legal}, now {now_in}")
    assert wrong == []
