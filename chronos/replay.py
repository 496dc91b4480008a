"""`chronos replay`: re-ingest terminal events as new events linked by `replay_of`.

The original is never touched (terminal states are never left); the copy goes
through the same acceptance path as an ingested line: RECEIVED, ACCEPTED, BUFFERED.
This is the dead-letter redrive a queue's users expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chronos import buffer, ingestion
from chronos.schema import events
from chronos.states import TERMINAL, State

ACTOR = "replay"


@dataclass
class ReplayReport:
    """Which originals were replayed as which new events, and which were skipped and why."""

    replayed: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": [{"original": o, "replay": n} for o, n in self.replayed],
            "skipped": [{"event_id": e, "reason": r} for e, r in self.skipped],
        }


def select_originals(
    conn: Connection,
    *,
    ids: Sequence[int] = (),
    state: State = State.FAILED_TERMINAL,
    source: str | None = None,
    since: float | None = None,
) -> list[int]:
    """Ids named explicitly, or of every event matching the filters, oldest first."""
    if ids:
        return sorted(set(ids))
    query = sa.select(events.c.id).where(events.c.state == state.value)
    if source is not None:
        query = query.where(events.c.source == source)
    if since is not None:
        query = query.where(events.c.updated_at >= since)
    return list(conn.execute(query.order_by(events.c.id)).scalars())


def replay(
    conn: Connection, original_ids: Sequence[int], *, force: bool, now: float
) -> ReplayReport:
    """Create one linked copy per terminal original, in the caller's transaction."""
    report = ReplayReport()
    if not original_ids:
        return report
    rows = {
        row.id: row for row in conn.execute(sa.select(events).where(events.c.id.in_(original_ids)))
    }
    replayed_before = set(
        conn.execute(
            sa.select(events.c.replay_of).where(events.c.replay_of.in_(original_ids))
        ).scalars()
    )
    copies: list[dict[str, object]] = []
    originals: list[int] = []
    for event_id in original_ids:
        row = rows.get(event_id)
        if row is None:
            report.skipped.append((event_id, "no such event"))
        elif State(row.state) not in TERMINAL:
            report.skipped.append((event_id, f"{row.state} is not terminal"))
        elif event_id in replayed_before and not force:
            report.skipped.append((event_id, "replayed before (use --force to replay again)"))
        else:
            originals.append(event_id)
            copies.append(
                ingestion.received_row(
                    source=row.source,
                    key=None,  # the producer's key stays with the original
                    type=row.type,
                    event_time=row.event_time,
                    payload=row.payload,
                    now=now,
                    actor=ACTOR,
                    note=f"replay of {event_id}",
                    replay_of=event_id,
                )
            )
    # One insert per copy keeps the original -> copy pairing explicit.
    new_ids = [ingestion.receive(conn, [copy])[0] for copy in copies]
    ingestion.accept(conn, new_ids, now=now)
    buffer.buffer_events(conn, new_ids, now=now)
    report.replayed.extend(zip(originals, new_ids, strict=True))
    return report
