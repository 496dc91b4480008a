"""The tables, the single source of truth for the schema (Alembic's target metadata).

Times are stored as Unix seconds (float, UTC) so that every comparison is numeric
and the clock can be injected. The triggers at the bottom make the database enforce
the state machine of `states.py` and write the history, whatever SQL reaches it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from chronos.states import CLAIMABLE, INITIAL, TERMINAL, TRANSITIONS, State

metadata = MetaData()

# SQLite needs INTEGER PRIMARY KEY AUTOINCREMENT for ids that are never reused.
Id = BigInteger().with_variant(Integer(), "sqlite")

_state_names = ", ".join(f"'{s.value}'" for s in State)


def _in(states: frozenset[State] | tuple[State, ...]) -> str:
    return ", ".join(f"'{s.value}'" for s in sorted(states))


ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", Id, primary_key=True),
    Column("input", Text, nullable=False),  # resolved path, or "-" for stdin
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("lines", BigInteger, nullable=False, server_default="0"),  # committed so far
    Column("byte_offset", BigInteger, nullable=False, server_default="0"),
    Column("prefix_sha256", Text, nullable=False),  # hash of bytes [0, byte_offset)
    Column("accepted", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("rejected", BigInteger, nullable=False, server_default="0"),
    Column("rejects_path", Text),
    Column("rejects_offset", BigInteger, nullable=False, server_default="0"),
    sqlite_autoincrement=True,
)
Index("ingest_runs_input", ingest_runs.c.input)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True),
    Column("source", Text, nullable=False),
    Column("key", Text),  # the producer's idempotency key
    Column("type", Text),
    Column("event_time", Float, nullable=False),
    Column("payload", Text, nullable=False),  # the original JSON text, unchanged
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("available_at", Float, nullable=False),
    Column("lease_owner", Text),
    Column("lease_expires_at", Float),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Who made the latest transition and why: the history trigger copies them.
    Column("actor", Text, nullable=False),
    Column("note", Text),
    Column("replay_of", Id, ForeignKey("events.id")),
    Column("ingest_run_id", Id, ForeignKey("ingest_runs.id")),
    Column("line_no", BigInteger),
    CheckConstraint(f"state IN ({_state_names})", name="events_state_known"),
    UniqueConstraint("source", "key", name="events_source_key"),
    UniqueConstraint("ingest_run_id", "line_no", name="events_run_line"),
    sqlite_autoincrement=True,
)

_claimable = ", ".join(f"'{s.value}'" for s in CLAIMABLE)
# Queries repeat these literal predicates: SQLite uses a partial index only when the
# query's WHERE contains its WHERE term as written, not as bound parameters.
READY = text(f"events.state IN ({_claimable})")
LEASED = text(f"events.state = '{State.PROCESSING.value}'")
LIVE = text(f"events.state NOT IN ({_in(TERMINAL)})")
# The claim walks this index in id order; terminal events are not in it, so a claim
# costs O(log n) however large the table grows.
Index(
    "events_ready",
    events.c.id,
    events.c.available_at,
    sqlite_where=text(f"state IN ({_claimable})"),
    postgresql_where=text(f"state IN ({_claimable})"),
)
Index(
    "events_leases",
    events.c.lease_expires_at,
    sqlite_where=text(f"state = '{State.PROCESSING.value}'"),
    postgresql_where=text(f"state = '{State.PROCESSING.value}'"),
)
# Counts what is not terminal yet (drain, check). A full index on state would tempt
# SQLite's planner away from events_ready and into sorting the whole backlog.
Index(
    "events_live",
    events.c.state,
    sqlite_where=text(f"state NOT IN ({_in(TERMINAL)})"),
    postgresql_where=text(f"state NOT IN ({_in(TERMINAL)})"),
)
Index("events_replay_of", events.c.replay_of)

event_transitions = Table(
    "event_transitions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("event_id", Id, ForeignKey("events.id"), nullable=False),
    Column("from_state", Text),  # NULL for the insert that creates the event
    Column("to_state", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("detail", Text),
    sqlite_autoincrement=True,
)
Index("event_transitions_event", event_transitions.c.event_id)

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Id, ForeignKey("events.id"), primary_key=True, autoincrement=False),
    Column("result", Text),  # JSON
    Column("processed_at", Float, nullable=False),
    Column("worker", Text, nullable=False),
)


def _pairs_sql(old: str, new: str) -> str:
    return " OR ".join(f"({old} = '{a.value}' AND {new} = '{b.value}')" for (a, b) in TRANSITIONS)


def sqlite_triggers() -> list[str]:
    """Return the SQLite trigger DDL derived from `states.TRANSITIONS`."""
    legal = _pairs_sql("OLD.state", "NEW.state")
    history = (
        "INSERT INTO event_transitions "
        "(event_id, from_state, to_state, at, actor, attempt, detail) "
        "VALUES (NEW.id, {from_}, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note);"
    )
    return [
        "CREATE TRIGGER events_insert_guard BEFORE INSERT ON events "
        f"WHEN NEW.state IS NOT '{INITIAL.value}' "
        "BEGIN SELECT RAISE(ABORT, 'chronos: events are inserted as RECEIVED'); END",
        "CREATE TRIGGER events_insert_history AFTER INSERT ON events "
        f"BEGIN {history.format(from_='NULL')} END",
        "CREATE TRIGGER events_state_guard BEFORE UPDATE OF state ON events "
        f"WHEN NEW.state IS NOT OLD.state AND NOT ({legal}) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: illegal state transition'); END",
        "CREATE TRIGGER events_state_history AFTER UPDATE OF state ON events "
        f"WHEN NEW.state IS NOT OLD.state BEGIN {history.format(from_='OLD.state')} END",
        "CREATE TRIGGER events_immutable BEFORE UPDATE OF "
        "id, source, key, type, event_time, payload, created_at, replay_of, ingest_run_id, line_no "
        "ON events BEGIN SELECT RAISE(ABORT, "
        "'chronos: identity and payload of an event never change'); END",
        "CREATE TRIGGER events_delete_guard BEFORE DELETE ON events "
        f"WHEN OLD.state NOT IN ({_in(TERMINAL)}) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: only terminal events can be deleted'); END",
        "CREATE TRIGGER event_transitions_append_only BEFORE UPDATE ON event_transitions "
        "BEGIN SELECT RAISE(ABORT, 'chronos: history is append-only'); END",
        "CREATE TRIGGER event_transitions_delete_guard BEFORE DELETE ON event_transitions "
        "WHEN EXISTS (SELECT 1 FROM events WHERE id = OLD.event_id "
        f"AND state NOT IN ({_in(TERMINAL)})) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: history of a live event cannot be deleted'); END",
        "CREATE TRIGGER processed_events_guard BEFORE INSERT ON processed_events "
        "WHEN (SELECT state FROM events WHERE id = NEW.event_id) IS NOT 'PROCESSED' "
        "BEGIN SELECT RAISE(ABORT, 'chronos: storage rows are only for PROCESSED events'); END",
        "CREATE TRIGGER processed_events_immutable BEFORE UPDATE ON processed_events "
        "BEGIN SELECT RAISE(ABORT, 'chronos: storage rows never change'); END",
        # INSERT OR REPLACE deletes the old row without firing delete triggers.
        "CREATE TRIGGER events_no_replace BEFORE INSERT ON events "
        "WHEN EXISTS (SELECT 1 FROM events WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: event ids are never reused'); END",
        "CREATE TRIGGER event_transitions_no_replace BEFORE INSERT ON event_transitions "
        "WHEN EXISTS (SELECT 1 FROM event_transitions WHERE id = NEW.id) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: history is append-only'); END",
        # REPLACE through a unique key would delete a live event: skip the row instead,
        # which is what ingestion's ON CONFLICT DO NOTHING asks for anyway.
        "CREATE TRIGGER events_no_replace_key BEFORE INSERT ON events "
        "WHEN NEW.key IS NOT NULL AND EXISTS (SELECT 1 FROM events "
        "WHERE source = NEW.source AND key = NEW.key) "
        "BEGIN SELECT RAISE(IGNORE); END",
        "CREATE TRIGGER events_no_replace_line BEFORE INSERT ON events "
        "WHEN NEW.ingest_run_id IS NOT NULL AND EXISTS (SELECT 1 FROM events "
        "WHERE ingest_run_id = NEW.ingest_run_id AND line_no = NEW.line_no) "
        "BEGIN SELECT RAISE(IGNORE); END",
        "CREATE TRIGGER processed_events_no_replace BEFORE INSERT ON processed_events "
        "WHEN EXISTS (SELECT 1 FROM processed_events WHERE event_id = NEW.event_id) "
        "BEGIN SELECT RAISE(ABORT, 'chronos: storage rows never change'); END",
    ]


def postgresql_triggers() -> list[str]:
    """Return the PostgreSQL trigger DDL derived from `states.TRANSITIONS`."""
    legal = _pairs_sql("OLD.state", "NEW.state")
    history = (
        "INSERT INTO event_transitions "
        "(event_id, from_state, to_state, at, actor, attempt, detail) "
        "VALUES (NEW.id, {from_}, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note);"
    )

    def fn(name: str, body: str) -> str:
        return (
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$"
        )

    def fail(message: str) -> str:
        return f"RAISE EXCEPTION 'chronos: {message}' USING ERRCODE = 'check_violation';"

    return [
        fn(
            "chronos_events_insert",
            f"IF NEW.state IS DISTINCT FROM '{INITIAL.value}' THEN "
            f"{fail('events are inserted as RECEIVED')} END IF; RETURN NEW;",
        ),
        fn("chronos_events_insert_history", f"{history.format(from_='NULL')} RETURN NULL;"),
        fn(
            "chronos_events_update",
            f"IF NEW.state IS DISTINCT FROM OLD.state AND NOT ({legal}) THEN "
            f"{fail('illegal state transition')} END IF; "
            "IF (NEW.id, NEW.source, NEW.key, NEW.type, NEW.event_time, NEW.payload, "
            "NEW.created_at, NEW.replay_of, NEW.ingest_run_id, NEW.line_no) IS DISTINCT FROM "
            "(OLD.id, OLD.source, OLD.key, OLD.type, OLD.event_time, OLD.payload, "
            "OLD.created_at, OLD.replay_of, OLD.ingest_run_id, OLD.line_no) THEN "
            f"{fail('identity and payload of an event never change')} END IF; RETURN NEW;",
        ),
        fn(
            "chronos_events_update_history",
            "IF NEW.state IS DISTINCT FROM OLD.state THEN "
            f"{history.format(from_='OLD.state')} END IF; RETURN NULL;",
        ),
        fn(
            "chronos_events_delete",
            f"IF OLD.state NOT IN ({_in(TERMINAL)}) THEN "
            f"{fail('only terminal events can be deleted')} END IF; RETURN OLD;",
        ),
        fn(
            "chronos_transitions_update",
            f"{fail('history is append-only')} RETURN NULL;",
        ),
        fn(
            "chronos_transitions_delete",
            "IF EXISTS (SELECT 1 FROM events WHERE id = OLD.event_id "
            f"AND state NOT IN ({_in(TERMINAL)})) THEN "
            f"{fail('history of a live event cannot be deleted')} END IF; RETURN OLD;",
        ),
        fn(
            "chronos_processed_insert",
            "IF (SELECT state FROM events WHERE id = NEW.event_id) IS DISTINCT FROM 'PROCESSED' "
            f"THEN {fail('storage rows are only for PROCESSED events')} END IF; RETURN NEW;",
        ),
        fn("chronos_processed_update", f"{fail('storage rows never change')} RETURN NULL;"),
        "CREATE TRIGGER events_insert_guard BEFORE INSERT ON events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_events_insert()",
        "CREATE TRIGGER events_insert_history AFTER INSERT ON events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_events_insert_history()",
        "CREATE TRIGGER events_update_guard BEFORE UPDATE ON events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_events_update()",
        "CREATE TRIGGER events_state_history AFTER UPDATE OF state ON events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_events_update_history()",
        "CREATE TRIGGER events_delete_guard BEFORE DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_events_delete()",
        "CREATE TRIGGER event_transitions_append_only BEFORE UPDATE ON event_transitions "
        "FOR EACH ROW EXECUTE FUNCTION chronos_transitions_update()",
        "CREATE TRIGGER event_transitions_delete_guard BEFORE DELETE ON event_transitions "
        "FOR EACH ROW EXECUTE FUNCTION chronos_transitions_delete()",
        "CREATE TRIGGER processed_events_guard BEFORE INSERT ON processed_events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_processed_insert()",
        "CREATE TRIGGER processed_events_immutable BEFORE UPDATE ON processed_events "
        "FOR EACH ROW EXECUTE FUNCTION chronos_processed_update()",
    ]
