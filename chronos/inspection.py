"""The read side: one event with its history, and counts over the queue. Never writes."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos import errors
from chronos.schema import event_transitions, events, processed_events
from chronos.states import CLAIMABLE, State


def event_detail(conn: Connection, event_id: int) -> dict[str, Any]:
    """Return the event, its storage row if any, replay links and its whole history.

    Raises:
        NotFound: no event has this id.
    """
    row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
    if row is None:
        raise errors.NotFound(f"no event with id {event_id}")
    detail: dict[str, Any] = {k: v for k, v in row.items() if k not in ("actor", "note")}
    detail["payload"] = json.loads(row["payload"])
    detail["payload_json"] = row["payload"]  # the original text, byte for byte
    stored = (
        conn.execute(sa.select(processed_events).where(processed_events.c.event_id == event_id))
        .mappings()
        .first()
    )
    detail["result"] = None
    detail["result_json"] = None
    if stored is not None:
        detail["result"] = json.loads(stored["result"]) if stored["result"] is not None else None
        detail["result_json"] = stored["result"]
        detail["processed_at"] = stored["processed_at"]
        detail["processed_by"] = stored["worker"]
    detail["replays"] = list(
        conn.execute(
            sa.select(events.c.id).where(events.c.replay_of == event_id).order_by(events.c.id)
        ).scalars()
    )
    history = conn.execute(
        sa.select(
            event_transitions.c.from_state,
            event_transitions.c.to_state,
            event_transitions.c.at,
            event_transitions.c.actor,
            event_transitions.c.attempt,
            event_transitions.c.detail,
        )
        .where(event_transitions.c.event_id == event_id)
        .order_by(event_transitions.c.id)
    ).mappings()
    detail["history"] = [dict(h) for h in history]
    return detail


def counts_by_state(conn: Connection) -> dict[str, int]:
    """Count events in every state, zero included."""
    counts = {s.value: 0 for s in State}
    for state, count in conn.execute(
        sa.select(events.c.state, sa.func.count()).group_by(events.c.state)
    ):
        counts[state] = count
    return counts


def queue_stats(conn: Connection, *, now: float, window: float = 60.0) -> dict[str, Any]:
    """Return counts by state, the backlog, the oldest waiting event and recent throughput."""
    counts = counts_by_state(conn)
    waiting = [s.value for s in CLAIMABLE]
    oldest = conn.execute(
        sa.select(events.c.id, events.c.created_at)
        .where(events.c.state.in_(waiting))
        .order_by(events.c.id)
        .limit(1)
    ).first()
    recent = conn.execute(
        sa.select(sa.func.count())
        .select_from(processed_events)
        .where(processed_events.c.processed_at >= now - window)
    ).scalar_one()
    expired = conn.execute(
        sa.select(sa.func.count())
        .select_from(events)
        .where(events.c.state == State.PROCESSING.value, events.c.lease_expires_at < now)
    ).scalar_one()
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "backlog": sum(counts[s] for s in waiting),
        "in_flight": counts[State.PROCESSING.value],
        "expired_leases": expired,
        "oldest_waiting_id": oldest.id if oldest else None,
        "oldest_waiting_age_s": round(now - oldest.created_at, 3) if oldest else None,
        "processed_last_minute": recent,
        "throughput_per_s": round(recent / window, 3),
    }


def examples(conn: Connection) -> dict[str, int | None]:
    """Pick one event of each interesting outcome, for pointing a user at `inspect`."""

    def first(*where: Any) -> int | None:
        found = conn.execute(
            sa.select(events.c.id).where(*where).order_by(events.c.id).limit(1)
        ).scalar()
        return int(found) if found is not None else None

    return {
        "processed": first(events.c.state == State.PROCESSED.value, events.c.attempts == 1),
        "retried_then_processed": first(
            events.c.state == State.PROCESSED.value, events.c.attempts > 1
        ),
        "failed_terminal": first(events.c.state == State.FAILED_TERMINAL.value),
    }
