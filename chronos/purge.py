"""`chronos purge`: explicit retention for terminal events, with their history and storage.

Only PROCESSED and FAILED_TERMINAL events are ever removed (the database refuses
anything else too). An original whose replay is kept is kept as well, so that
`replay_of` always points at a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos.schema import event_transitions, events, processed_events
from chronos.states import TERMINAL, State


@dataclass
class PurgeReport:
    """What was removed (or, with dry_run, would be)."""

    dry_run: bool
    before: float
    events: int = 0
    transitions: int = 0
    storage_rows: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    vacuumed: bool = False


def _candidates(states: Sequence[State], before: float) -> sa.ColumnElement[bool]:
    replay = events.alias("replay")
    kept_replay = (
        sa.select(replay.c.id)
        .where(
            replay.c.replay_of == events.c.id,
            sa.or_(replay.c.state.not_in([s.value for s in states]), replay.c.updated_at >= before),
        )
        .exists()
    )
    return sa.and_(
        events.c.state.in_([s.value for s in states]),
        events.c.updated_at < before,
        ~kept_replay,
    )


def check_states(states: Sequence[State]) -> None:
    """Refuse a state that is not terminal."""
    live = [s.value for s in states if s not in TERMINAL]
    if live:
        raise ValueError(f"purge removes terminal events only, not {', '.join(live)}")


def plan(conn: Connection, *, states: Sequence[State], before: float) -> PurgeReport:
    """Count what a purge would remove, without removing anything."""
    check_states(states)
    report = PurgeReport(dry_run=True, before=before)
    picked = sa.select(events.c.id).where(_candidates(states, before))
    for state, count in conn.execute(
        sa.select(events.c.state, sa.func.count())
        .where(_candidates(states, before))
        .group_by(events.c.state)
    ):
        report.by_state[state] = count
    report.events = sum(report.by_state.values())
    report.transitions = conn.execute(
        sa.select(sa.func.count()).where(event_transitions.c.event_id.in_(picked))
    ).scalar_one()
    report.storage_rows = conn.execute(
        sa.select(sa.func.count()).where(processed_events.c.event_id.in_(picked))
    ).scalar_one()
    return report


def purge_batch(
    conn: Connection, report: PurgeReport, *, states: Sequence[State], batch: int
) -> int:
    """Remove up to `batch` events with their history and storage; return how many."""
    check_states(states)
    rows = conn.execute(
        sa.select(events.c.id, events.c.state)
        .where(_candidates(states, report.before))
        .order_by(events.c.id.desc())  # replays (newer ids) go before their originals
        .limit(batch)
    ).all()
    if not rows:
        return 0
    ids = [row.id for row in rows]
    report.storage_rows += conn.execute(
        sa.delete(processed_events).where(processed_events.c.event_id.in_(ids))
    ).rowcount
    report.transitions += conn.execute(
        sa.delete(event_transitions).where(event_transitions.c.event_id.in_(ids))
    ).rowcount
    removed = conn.execute(sa.delete(events).where(events.c.id.in_(ids))).rowcount
    report.events += removed
    for row in rows:
        report.by_state[row.state] = report.by_state.get(row.state, 0) + 1
    return removed
