"""`chronos check`: an integrity audit that only reads, safe beside running workers.

Each rule names what must hold; a violation names the event (or table) and the rule.
It reads one snapshot: SQLite's WAL read transaction, PostgreSQL's REPEATABLE READ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos.inspection import counts_by_state
from chronos.schema import event_transitions, events, processed_events
from chronos.states import INITIAL, TRANSITIONS, State
from chronos.worker import RELEASE_NOTE

RULES = {
    "database-integrity": "the database file passes SQLite's own integrity check",
    "history-legal": "every step of an event's history is a legal transition",
    "history-chain": "each step starts where the previous one ended, from RECEIVED",
    "history-current": "the last step of the history ends in the event's current state",
    "storage-processed": "every PROCESSED event has exactly one storage row",
    "storage-only-processed": "no storage row exists for an event that is not PROCESSED",
    "attempts-history": "attempts equal the claims in the history, less releases",
    "lease-consistent": "PROCESSING events hold a lease; other events hold none",
    "not-stuck": "no committed event waits in RECEIVED or ACCEPTED",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule."""

    rule: str
    event_id: int | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "event_id": self.event_id, "detail": self.detail}


@dataclass
class CheckReport:
    """The audit's result: violations (exit 1 when any), and what was looked at."""

    events: int
    transitions: int
    storage_rows: int
    counts: dict[str, int]
    expired_leases: list[dict[str, Any]]
    violations: list[Violation]

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "transitions": self.transitions,
            "storage_rows": self.storage_rows,
            "counts": self.counts,
            "expired_leases": self.expired_leases,
            "violations": [v.as_dict() for v in self.violations],
        }


def audit(conn: Connection, *, now: float, limit: int = 1000) -> CheckReport:
    """Run every rule; keep at most `limit` violations per rule."""
    violations: list[Violation] = []
    for rule_violations in (
        _integrity(conn),
        _history(conn),
        _storage(conn),
        _leases(conn),
        _stuck(conn),
    ):
        per_rule: dict[str, int] = {}
        for violation in rule_violations:
            per_rule[violation.rule] = per_rule.get(violation.rule, 0) + 1
            if per_rule[violation.rule] <= limit:
                violations.append(violation)
    counts = counts_by_state(conn)
    expired = [
        {"event_id": row.id, "lease_owner": row.lease_owner, "expired_at": row.lease_expires_at}
        for row in conn.execute(
            sa.select(events.c.id, events.c.lease_owner, events.c.lease_expires_at)
            .where(events.c.state == State.PROCESSING.value, events.c.lease_expires_at < now)
            .order_by(events.c.id)
            .limit(limit)
        )
    ]
    return CheckReport(
        events=sum(counts.values()),
        transitions=_count(conn, event_transitions),
        storage_rows=_count(conn, processed_events),
        counts=counts,
        expired_leases=expired,
        violations=violations,
    )


def _count(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _integrity(conn: Connection) -> Iterator[Violation]:
    if conn.dialect.name != "sqlite":
        return
    for (line,) in conn.exec_driver_sql("PRAGMA integrity_check"):
        if line != "ok":
            yield Violation("database-integrity", None, line)


def _history(conn: Connection) -> Iterator[Violation]:
    """Walk every event with its history in one ordered pass."""
    steps = (
        sa.select(
            events.c.id,
            events.c.state,
            events.c.attempts,
            event_transitions.c.from_state,
            event_transitions.c.to_state,
            event_transitions.c.detail,
        )
        .select_from(events.outerjoin(event_transitions))
        .order_by(events.c.id, event_transitions.c.id)
    )
    current: tuple[int, str, int] | None = None
    previous: str | None = None
    claims = releases = 0
    seen_steps = False
    for row in conn.execution_options(stream_results=True, yield_per=5000).execute(steps):
        if current is None or row.id != current[0]:
            if current is not None:
                yield from _close(current, previous, claims, releases, seen_steps)
            current = (row.id, row.state, row.attempts)
            previous, claims, releases, seen_steps = None, 0, 0, False
        if row.to_state is None:  # no history at all
            continue
        seen_steps = True
        if row.from_state != previous:
            yield Violation(
                "history-chain",
                row.id,
                f"step {row.from_state} -> {row.to_state} follows {previous or 'nothing'}",
            )
        if row.from_state is None:
            if row.to_state != INITIAL.value:
                yield Violation("history-legal", row.id, f"created as {row.to_state}")
        elif (State(row.from_state), State(row.to_state)) not in TRANSITIONS:
            yield Violation("history-legal", row.id, f"{row.from_state} -> {row.to_state}")
        if row.to_state == State.PROCESSING.value:
            claims += 1
        if row.from_state == State.PROCESSING.value and row.detail == RELEASE_NOTE:
            releases += 1
        previous = row.to_state
    if current is not None:
        yield from _close(current, previous, claims, releases, seen_steps)


def _close(
    current: tuple[int, str, int], last: str | None, claims: int, releases: int, seen: bool
) -> Iterator[Violation]:
    event_id, state, attempts = current
    if not seen:
        yield Violation("history-current", event_id, f"no history, state {state}")
        return
    if last != state:
        yield Violation("history-current", event_id, f"history ends {last}, state is {state}")
    if attempts != claims - releases:
        yield Violation(
            "attempts-history",
            event_id,
            f"attempts {attempts}, history has {claims} claims and {releases} releases",
        )


def _storage(conn: Connection) -> Iterator[Violation]:
    missing = (
        sa.select(events.c.id)
        .select_from(events.outerjoin(processed_events))
        .where(events.c.state == State.PROCESSED.value, processed_events.c.event_id.is_(None))
        .order_by(events.c.id)
    )
    for event_id in conn.execute(missing).scalars():
        yield Violation("storage-processed", event_id, "PROCESSED without a storage row")
    extra = (
        sa.select(processed_events.c.event_id, events.c.state)
        .select_from(processed_events.outerjoin(events))
        .where(sa.or_(events.c.state.is_(None), events.c.state != State.PROCESSED.value))
        .order_by(processed_events.c.event_id)
    )
    for event_id, state in conn.execute(extra):
        yield Violation(
            "storage-only-processed",
            event_id,
            f"storage row for an event that is {state or 'missing'}",
        )


def _leases(conn: Connection) -> Iterator[Violation]:
    leased = events.c.state == State.PROCESSING.value
    held = events.c.lease_owner.is_not(None) & events.c.lease_expires_at.is_not(None)
    unheld = events.c.lease_owner.is_(None) & events.c.lease_expires_at.is_(None)
    bad = (
        sa.select(events.c.id, events.c.state, events.c.lease_owner)
        .where(sa.or_(leased & ~held, ~leased & ~unheld))
        .order_by(events.c.id)
    )
    for row in conn.execute(bad):
        yield Violation(
            "lease-consistent", row.id, f"state {row.state} with lease owner {row.lease_owner}"
        )


def _stuck(conn: Connection) -> Iterator[Violation]:
    early = [State.RECEIVED.value, State.ACCEPTED.value]
    for row in conn.execute(
        sa.select(events.c.id, events.c.state)
        .where(events.c.state.in_(early))
        .order_by(events.c.id)
    ):
        yield Violation("not-stuck", row.id, f"committed in {row.state}")
