"""The worker's transitions: claim under a lease, renew it, finish, release, recover.

Owns BUFFERED -> PROCESSING, FAILED_RETRYABLE -> PROCESSING and PROCESSING ->
{PROCESSED, FAILED_RETRYABLE, FAILED_TERMINAL}. Every statement is guarded by the
state it expects and, after the claim, by the claimant's lease. The loop that drives
these lives in `runner.py`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos import storage
from chronos.db import transition_matching
from chronos.handlers import Event
from chronos.retry import Decision
from chronos.schema import LEASED, LIVE, READY, events
from chronos.states import CLAIMABLE, TRANSITIONS, WORKER, State

RETRY_NOTE = "retry after backoff"
RELEASE_NOTE = "released on shutdown, not counted as an attempt"

for _source in CLAIMABLE:  # the claim below moves both claimable states at once
    assert TRANSITIONS[(_source, State.PROCESSING)] == WORKER


@dataclass(frozen=True)
class Claim:
    """An event this worker holds under a lease."""

    id: int
    source: str
    key: str | None
    type: str | None
    event_time: float
    created_at: float
    payload: str
    attempts: int

    def to_event(self) -> Event:
        """The handler's view of the claim."""
        return Event(
            id=self.id,
            source=self.source,
            key=self.key,
            type=self.type,
            event_time=dt.datetime.fromtimestamp(self.event_time, tz=dt.UTC),
            accepted_at=dt.datetime.fromtimestamp(self.created_at, tz=dt.UTC),
            payload=json.loads(self.payload),
            attempt=self.attempts,
        )


@dataclass(frozen=True)
class Recovered:
    """An event whose lease expired, now FAILED_RETRYABLE or FAILED_TERMINAL."""

    id: int
    state: State
    note: str


def claim(conn: Connection, *, worker: str, batch: int, lease: float, now: float) -> list[Claim]:
    """Claim up to `batch` ready events, oldest id first, in one guarded statement."""
    ready = (
        sa.select(events.c.id)
        .where(READY, events.c.available_at <= now)
        .order_by(events.c.id)
        .limit(batch)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's write lock serialises
    )
    stmt = (
        sa.update(events)
        .where(events.c.id.in_(ready.scalar_subquery()), READY)
        .values(
            state=State.PROCESSING.value,
            attempts=events.c.attempts + 1,
            lease_owner=worker,
            lease_expires_at=now + lease,
            actor=worker,
            note=sa.case((events.c.state == State.FAILED_RETRYABLE.value, RETRY_NOTE), else_=None),
            updated_at=now,
        )
        .returning(
            events.c.id,
            events.c.source,
            events.c.key,
            events.c.type,
            events.c.event_time,
            events.c.created_at,
            events.c.payload,
            events.c.attempts,
        )
    )
    claims = [Claim(*row) for row in conn.execute(stmt)]
    return sorted(claims, key=lambda c: c.id)


def renew(conn: Connection, ids: Sequence[int], *, worker: str, until: float) -> set[int]:
    """Extend the lease of `ids` still held by `worker`; return those still held.

    Renewal is not a transition: the state does not change and no history is written.
    """
    if not ids:
        return set()
    stmt = (
        sa.update(events)
        .where(events.c.id.in_(ids), LEASED, events.c.lease_owner == worker)
        .values(lease_expires_at=until)
        .returning(events.c.id)
    )
    return set(conn.execute(stmt).scalars())


def succeed(
    conn: Connection, results: dict[int, str | None], *, worker: str, now: float
) -> list[int]:
    """PROCESSING -> PROCESSED and the storage rows, in the caller's transaction.

    Returns the ids recorded; an id missing from it had lost its lease, and
    nothing was written for it.
    """
    done = transition_matching(
        conn,
        sorted(results),
        State.PROCESSING,
        State.PROCESSED,
        owner=WORKER,
        actor=worker,
        now=now,
        lease_owner=worker,
        values={"lease_owner": None, "lease_expires_at": None},
    )
    storage.store(conn, [(i, results[i]) for i in sorted(done)], worker=worker, now=now)
    return done


def fail(
    conn: Connection, claim_id: int, decision: Decision, *, error: str, worker: str, now: float
) -> bool:
    """PROCESSING -> FAILED_RETRYABLE or FAILED_TERMINAL as `decision` says.

    Returns False, writing nothing, when the lease was lost.
    """
    done = transition_matching(
        conn,
        [claim_id],
        State.PROCESSING,
        decision.state,
        owner=WORKER,
        actor=worker,
        now=now,
        note=decision.reason,
        lease_owner=worker,
        values={
            "last_error": error,
            "available_at": decision.available_at,
            "lease_owner": None,
            "lease_expires_at": None,
        },
    )
    return bool(done)


def release(conn: Connection, ids: Sequence[int], *, worker: str, now: float) -> list[int]:
    """Give back claims never started (graceful stop), not counted as an attempt.

    Returns the ids released; the others had lost their lease.
    """
    return transition_matching(
        conn,
        ids,
        State.PROCESSING,
        State.FAILED_RETRYABLE,
        owner=WORKER,
        actor=worker,
        now=now,
        note=RELEASE_NOTE,
        lease_owner=worker,
        values={
            "attempts": events.c.attempts - 1,
            "available_at": now,
            "lease_owner": None,
            "lease_expires_at": None,
        },
    )


def recover_expired(
    conn: Connection, *, worker: str, max_attempts: int, retry_at: float, now: float
) -> list[Recovered]:
    """Fail every event whose lease expired: retryable, or terminal when attempts are spent."""
    for target in (State.FAILED_RETRYABLE, State.FAILED_TERMINAL):
        assert TRANSITIONS[(State.PROCESSING, target)] == WORKER
    note = sa.literal("lease of ") + events.c.lease_owner + sa.literal(" expired")
    exhausted = events.c.attempts >= max_attempts
    stmt = (
        sa.update(events)
        .where(LEASED, events.c.lease_expires_at < now)
        .values(
            state=sa.case(
                (exhausted, State.FAILED_TERMINAL.value), else_=State.FAILED_RETRYABLE.value
            ),
            note=sa.case((exhausted, sa.literal("attempts exhausted: ") + note), else_=note),
            last_error=note,
            available_at=retry_at,
            lease_owner=None,
            lease_expires_at=None,
            actor=worker,
            updated_at=now,
        )
        .returning(events.c.id, events.c.state, events.c.note)
    )
    return [Recovered(row.id, State(row.state), row.note) for row in conn.execute(stmt)]


def unfinished(conn: Connection) -> int:
    """Count events that are not terminal yet."""
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(events).where(LIVE)).scalar_one()
    )


def next_wakeup(conn: Connection) -> float | None:
    """The earliest time a retry becomes ready or a lease expires, if any."""
    retry = conn.execute(sa.select(sa.func.min(events.c.available_at)).where(READY)).scalar_one()
    lease = conn.execute(
        sa.select(sa.func.min(events.c.lease_expires_at)).where(LEASED)
    ).scalar_one()
    times = [t for t in (retry, lease) if t is not None]
    return min(times) if times else None
