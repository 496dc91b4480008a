"""create events transitions storage

Revision ID: 0001
Revises:
Create Date: 2026-11-27 15:23:41.376060

The triggers make the database itself enforce the state machine and write the
history. They are a frozen copy of what `chronos.schema` generated from
`chronos.states.TRANSITIONS` at this revision; a change of the state machine needs a
new revision (tests compare the two).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    "CREATE TRIGGER events_insert_guard BEFORE INSERT ON events WHEN NEW.state IS NOT 'RECEIVED' BEGIN SELECT RAISE(ABORT, 'chronos: events are inserted as RECEIVED'); END",
    "CREATE TRIGGER events_insert_history AFTER INSERT ON events BEGIN INSERT INTO event_transitions (event_id, from_state, to_state, at, actor, attempt, detail) VALUES (NEW.id, NULL, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note); END",
    "CREATE TRIGGER events_state_guard BEFORE UPDATE OF state ON events WHEN NEW.state IS NOT OLD.state AND NOT ((OLD.state = 'RECEIVED' AND NEW.state = 'ACCEPTED') OR (OLD.state = 'ACCEPTED' AND NEW.state = 'BUFFERED') OR (OLD.state = 'BUFFERED' AND NEW.state = 'PROCESSING') OR (OLD.state = 'FAILED_RETRYABLE' AND NEW.state = 'PROCESSING') OR (OLD.state = 'PROCESSING' AND NEW.state = 'PROCESSED') OR (OLD.state = 'PROCESSING' AND NEW.state = 'FAILED_RETRYABLE') OR (OLD.state = 'PROCESSING' AND NEW.state = 'FAILED_TERMINAL')) BEGIN SELECT RAISE(ABORT, 'chronos: illegal state transition'); END",
    "CREATE TRIGGER events_state_history AFTER UPDATE OF state ON events WHEN NEW.state IS NOT OLD.state BEGIN INSERT INTO event_transitions (event_id, from_state, to_state, at, actor, attempt, detail) VALUES (NEW.id, OLD.state, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note); END",
    "CREATE TRIGGER events_immutable BEFORE UPDATE OF id, source, key, type, event_time, payload, created_at, replay_of, ingest_run_id, line_no ON events BEGIN SELECT RAISE(ABORT, 'chronos: identity and payload of an event never change'); END",
    "CREATE TRIGGER events_delete_guard BEFORE DELETE ON events WHEN OLD.state NOT IN ('FAILED_TERMINAL', 'PROCESSED') BEGIN SELECT RAISE(ABORT, 'chronos: only terminal events can be deleted'); END",
    "CREATE TRIGGER event_transitions_append_only BEFORE UPDATE ON event_transitions BEGIN SELECT RAISE(ABORT, 'chronos: history is append-only'); END",
    "CREATE TRIGGER event_transitions_delete_guard BEFORE DELETE ON event_transitions WHEN EXISTS (SELECT 1 FROM events WHERE id = OLD.event_id AND state NOT IN ('FAILED_TERMINAL', 'PROCESSED')) BEGIN SELECT RAISE(ABORT, 'chronos: history of a live event cannot be deleted'); END",
    "CREATE TRIGGER processed_events_guard BEFORE INSERT ON processed_events WHEN (SELECT state FROM events WHERE id = NEW.event_id) IS NOT 'PROCESSED' BEGIN SELECT RAISE(ABORT, 'chronos: storage rows are only for PROCESSED events'); END",
    "CREATE TRIGGER processed_events_immutable BEFORE UPDATE ON processed_events BEGIN SELECT RAISE(ABORT, 'chronos: storage rows never change'); END",
    "CREATE TRIGGER events_no_replace BEFORE INSERT ON events WHEN EXISTS (SELECT 1 FROM events WHERE id = NEW.id) BEGIN SELECT RAISE(ABORT, 'chronos: event ids are never reused'); END",
    "CREATE TRIGGER event_transitions_no_replace BEFORE INSERT ON event_transitions WHEN EXISTS (SELECT 1 FROM event_transitions WHERE id = NEW.id) BEGIN SELECT RAISE(ABORT, 'chronos: history is append-only'); END",
    "CREATE TRIGGER events_no_replace_key BEFORE INSERT ON events WHEN NEW.key IS NOT NULL AND EXISTS (SELECT 1 FROM events WHERE source = NEW.source AND key = NEW.key) BEGIN SELECT RAISE(IGNORE); END",
    "CREATE TRIGGER events_no_replace_line BEFORE INSERT ON events WHEN NEW.ingest_run_id IS NOT NULL AND EXISTS (SELECT 1 FROM events WHERE ingest_run_id = NEW.ingest_run_id AND line_no = NEW.line_no) BEGIN SELECT RAISE(IGNORE); END",
    "CREATE TRIGGER processed_events_no_replace BEFORE INSERT ON processed_events WHEN EXISTS (SELECT 1 FROM processed_events WHERE event_id = NEW.event_id) BEGIN SELECT RAISE(ABORT, 'chronos: storage rows never change'); END",
]

POSTGRESQL_TRIGGERS = [
    "CREATE FUNCTION chronos_events_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.state IS DISTINCT FROM 'RECEIVED' THEN RAISE EXCEPTION 'chronos: events are inserted as RECEIVED' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    "CREATE FUNCTION chronos_events_insert_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO event_transitions (event_id, from_state, to_state, at, actor, attempt, detail) VALUES (NEW.id, NULL, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note); RETURN NULL; END $$",
    "CREATE FUNCTION chronos_events_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.state IS DISTINCT FROM OLD.state AND NOT ((OLD.state = 'RECEIVED' AND NEW.state = 'ACCEPTED') OR (OLD.state = 'ACCEPTED' AND NEW.state = 'BUFFERED') OR (OLD.state = 'BUFFERED' AND NEW.state = 'PROCESSING') OR (OLD.state = 'FAILED_RETRYABLE' AND NEW.state = 'PROCESSING') OR (OLD.state = 'PROCESSING' AND NEW.state = 'PROCESSED') OR (OLD.state = 'PROCESSING' AND NEW.state = 'FAILED_RETRYABLE') OR (OLD.state = 'PROCESSING' AND NEW.state = 'FAILED_TERMINAL')) THEN RAISE EXCEPTION 'chronos: illegal state transition' USING ERRCODE = 'check_violation'; END IF; IF (NEW.id, NEW.source, NEW.key, NEW.type, NEW.event_time, NEW.payload, NEW.created_at, NEW.replay_of, NEW.ingest_run_id, NEW.line_no) IS DISTINCT FROM (OLD.id, OLD.source, OLD.key, OLD.type, OLD.event_time, OLD.payload, OLD.created_at, OLD.replay_of, OLD.ingest_run_id, OLD.line_no) THEN RAISE EXCEPTION 'chronos: identity and payload of an event never change' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    "CREATE FUNCTION chronos_events_update_history() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.state IS DISTINCT FROM OLD.state THEN INSERT INTO event_transitions (event_id, from_state, to_state, at, actor, attempt, detail) VALUES (NEW.id, OLD.state, NEW.state, NEW.updated_at, NEW.actor, NEW.attempts, NEW.note); END IF; RETURN NULL; END $$",
    "CREATE FUNCTION chronos_events_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF OLD.state NOT IN ('FAILED_TERMINAL', 'PROCESSED') THEN RAISE EXCEPTION 'chronos: only terminal events can be deleted' USING ERRCODE = 'check_violation'; END IF; RETURN OLD; END $$",
    "CREATE FUNCTION chronos_transitions_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'chronos: history is append-only' USING ERRCODE = 'check_violation'; RETURN NULL; END $$",
    "CREATE FUNCTION chronos_transitions_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF EXISTS (SELECT 1 FROM events WHERE id = OLD.event_id AND state NOT IN ('FAILED_TERMINAL', 'PROCESSED')) THEN RAISE EXCEPTION 'chronos: history of a live event cannot be deleted' USING ERRCODE = 'check_violation'; END IF; RETURN OLD; END $$",
    "CREATE FUNCTION chronos_processed_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF (SELECT state FROM events WHERE id = NEW.event_id) IS DISTINCT FROM 'PROCESSED' THEN RAISE EXCEPTION 'chronos: storage rows are only for PROCESSED events' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    "CREATE FUNCTION chronos_processed_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'chronos: storage rows never change' USING ERRCODE = 'check_violation'; RETURN NULL; END $$",
    "CREATE TRIGGER events_insert_guard BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION chronos_events_insert()",
    "CREATE TRIGGER events_insert_history AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION chronos_events_insert_history()",
    "CREATE TRIGGER events_update_guard BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION chronos_events_update()",
    "CREATE TRIGGER events_state_history AFTER UPDATE OF state ON events FOR EACH ROW EXECUTE FUNCTION chronos_events_update_history()",
    "CREATE TRIGGER events_delete_guard BEFORE DELETE ON events FOR EACH ROW EXECUTE FUNCTION chronos_events_delete()",
    "CREATE TRIGGER event_transitions_append_only BEFORE UPDATE ON event_transitions FOR EACH ROW EXECUTE FUNCTION chronos_transitions_update()",
    "CREATE TRIGGER event_transitions_delete_guard BEFORE DELETE ON event_transitions FOR EACH ROW EXECUTE FUNCTION chronos_transitions_delete()",
    "CREATE TRIGGER processed_events_guard BEFORE INSERT ON processed_events FOR EACH ROW EXECUTE FUNCTION chronos_processed_insert()",
    "CREATE TRIGGER processed_events_immutable BEFORE UPDATE ON processed_events FOR EACH ROW EXECUTE FUNCTION chronos_processed_update()",
]


def upgrade() -> None:
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("lines", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("prefix_sha256", sa.Text(), nullable=False),
        sa.Column("accepted", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("duplicates", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rejected", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rejects_path", sa.Text(), nullable=True),
        sa.Column("rejects_offset", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("ingest_runs", schema=None) as batch_op:
        batch_op.create_index("ingest_runs_input", ["input"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("event_time", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column(
            "replay_of",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column(
            "ingest_run_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("line_no", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "state IN ('RECEIVED', 'ACCEPTED', 'BUFFERED', 'PROCESSING', 'PROCESSED', 'FAILED_RETRYABLE', 'FAILED_TERMINAL')",
            name="events_state_known",
        ),
        sa.ForeignKeyConstraint(
            ["ingest_run_id"],
            ["ingest_runs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["replay_of"],
            ["events.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ingest_run_id", "line_no", name="events_run_line"),
        sa.UniqueConstraint("source", "key", name="events_source_key"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "events_leases",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("state = 'PROCESSING'"),
            postgresql_where=sa.text("state = 'PROCESSING'"),
        )
        batch_op.create_index(
            "events_ready",
            ["id", "available_at"],
            unique=False,
            sqlite_where=sa.text("state IN ('BUFFERED', 'FAILED_RETRYABLE')"),
            postgresql_where=sa.text("state IN ('BUFFERED', 'FAILED_RETRYABLE')"),
        )
        batch_op.create_index("events_replay_of", ["replay_of"], unique=False)
        batch_op.create_index(
            "events_live",
            ["state"],
            unique=False,
            sqlite_where=sa.text("state NOT IN ('FAILED_TERMINAL', 'PROCESSED')"),
            postgresql_where=sa.text("state NOT IN ('FAILED_TERMINAL', 'PROCESSED')"),
        )

    op.create_table(
        "event_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("from_state", sa.Text(), nullable=True),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("event_transitions", schema=None) as batch_op:
        batch_op.create_index("event_transitions_event", ["event_id"], unique=False)

    op.create_table(
        "processed_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.Float(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
        ),
        sa.PrimaryKeyConstraint("event_id"),
    )
    triggers = SQLITE_TRIGGERS if op.get_bind().dialect.name == "sqlite" else POSTGRESQL_TRIGGERS
    for ddl in triggers:
        op.execute(ddl)


def downgrade() -> None:
    # Dropping the tables drops their triggers; PostgreSQL keeps the functions.
    if op.get_bind().dialect.name == "postgresql":
        for ddl in POSTGRESQL_TRIGGERS:
            if ddl.startswith("CREATE FUNCTION "):
                name = ddl.split()[2].split("(")[0]
                op.execute(f"DROP FUNCTION IF EXISTS {name}() CASCADE")
    op.drop_table("processed_events")
    with op.batch_alter_table("event_transitions", schema=None) as batch_op:
        batch_op.drop_index("event_transitions_event")

    op.drop_table("event_transitions")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("events_live")
        batch_op.drop_index("events_replay_of")
        batch_op.drop_index(
            "events_ready",
            sqlite_where=sa.text("state IN ('BUFFERED', 'FAILED_RETRYABLE')"),
            postgresql_where=sa.text("state IN ('BUFFERED', 'FAILED_RETRYABLE')"),
        )
        batch_op.drop_index(
            "events_leases",
            sqlite_where=sa.text("state = 'PROCESSING'"),
            postgresql_where=sa.text("state = 'PROCESSING'"),
        )

    op.drop_table("events")
    with op.batch_alter_table("ingest_runs", schema=None) as batch_op:
        batch_op.drop_index("ingest_runs_input")

    op.drop_table("ingest_runs")
