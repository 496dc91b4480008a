"""Dead-letter redrive (`replay`) and retention (`purge`), with an injected clock.

Time is a `Clock` the tests move by hand, passed as `Chronos(url, clock=...)`, so
"failed two days ago" and "older than 30 days" are exact. The handler fails an
event with `"fail": true` terminally, unless it is a replay (no producer key):
the downstream fault has been fixed by the time anyone redrives.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import run_cli

from chronos import Chronos, TerminalError
from chronos.handlers import Event
from chronos.schema import event_transitions, events, processed_events
from chronos.states import State

MakeEvent = Callable[..., dict[str, Any]]
WriteJsonl = Callable[..., Path]

DAY = 86400.0
T0 = 1_750_000_000.0  # 2025-06-15


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, days: float) -> None:
        self.now = T0 + days * DAY


def _handle(event: Event) -> dict[str, Any]:
    if event.payload.get("fail") and event.key is not None:
        raise TerminalError("downstream rejected it")
    return {"ok": event.id}


class Queue:
    """One database, its clock, and ways to feed and drain it."""

    def __init__(self, url: str, write_jsonl: WriteJsonl, make_event: MakeEvent) -> None:
        self.url = url
        self.clock = Clock()
        self.app = Chronos(url, clock=self.clock)
        self._write = write_jsonl
        self._make = make_event
        self._files = 0

    def ingest(self, *overrides: dict[str, Any]) -> list[int]:
        """Accept one event per override dict; return their ids in order."""
        self._files += 1
        objects = [self._make(**o) for o in overrides]
        report = self.app.ingest(str(self._write(objects, name=f"in-{self._files}.jsonl")))
        assert report.accepted == len(objects)
        with self.app.engine.connect() as conn:
            query = sa.select(events.c.id).where(events.c.ingest_run_id == report.run_id)
            return list(conn.execute(query.order_by(events.c.id)).scalars())

    def at(self, days: float) -> Queue:
        """Move the clock to `days` after T0."""
        self.clock.at(days)
        return self

    def drain(self) -> None:
        self.app.worker(_handle, max_attempts=1).run(drain=True)

    def state(self, event_id: int) -> str:
        return str(self.app.inspect(event_id)["state"])

    def ids(self, table: sa.Table = events, column: str = "id") -> set[int]:
        with self.app.engine.connect() as conn:
            return set(conn.execute(sa.select(table.c[column])).scalars())

    def counts(self) -> tuple[int, int, int]:
        return (
            len(self.ids()),
            len(self.ids(event_transitions, "id")),
            len(self.ids(processed_events, "event_id")),
        )

    def audit(self) -> None:
        report = self.app.check()
        assert report.ok, [v.as_dict() for v in report.violations]


@pytest.fixture
def queue(db_url: str, write_jsonl: WriteJsonl, make_event: MakeEvent) -> Iterator[Queue]:
    q = Queue(db_url, write_jsonl, make_event)
    yield q
    q.app.close()


# -- replay ---------------------------------------------------------------------


def test_replay_by_id_creates_a_linked_buffered_copy_and_leaves_the_original_untouched(
    queue: Queue,
) -> None:
    [original] = queue.ingest({"fail": True, "source": "pump-7"})
    queue.drain()
    before = queue.app.inspect(original)
    assert before["state"] == State.FAILED_TERMINAL

    report = queue.at(1).app.replay([original])

    [(replayed, copy)] = report.replayed
    assert (replayed, report.skipped) == (original, [])
    after = queue.app.inspect(original)
    assert after["replays"] == [copy]
    assert {k: v for k, v in after.items() if k != "replays"} == {
        k: v for k, v in before.items() if k != "replays"
    }
    assert len(after["history"]) == len(before["history"]) == 5
    new = queue.app.inspect(copy)
    assert (new["state"], new["replay_of"], new["replays"]) == ("BUFFERED", original, [])
    assert (new["source"], new["key"], new["attempts"]) == ("pump-7", None, 0)
    assert new["payload"] == before["payload"]
    assert new["event_time"] == before["event_time"]
    assert [(h["from_state"], h["to_state"]) for h in new["history"]] == [
        (None, "RECEIVED"),
        ("RECEIVED", "ACCEPTED"),
        ("ACCEPTED", "BUFFERED"),
    ]
    assert new["history"][0]["detail"] == f"replay of {original}"
    assert {h["at"] for h in new["history"]} == {T0 + DAY}
    queue.audit()


def test_replaying_an_original_again_needs_force(queue: Queue) -> None:
    [original] = queue.ingest({"fail": True})
    queue.drain()
    [(_, first)] = queue.app.replay([original]).replayed

    again = queue.app.replay([original])
    forced = queue.app.replay([original], force=True)

    assert again.replayed == []
    assert again.skipped == [(original, "replayed before (use --force to replay again)")]
    [(_, second)] = forced.replayed
    assert queue.app.inspect(original)["replays"] == [first, second]
    assert queue.app.inspect(second)["replay_of"] == original
    queue.audit()


def test_replay_skips_a_live_or_missing_event_with_a_reason(queue: Queue) -> None:
    [live] = queue.ingest({})
    before = queue.counts()

    report = queue.app.replay([live, 10**6])

    assert report.replayed == []
    assert report.skipped == [(live, "BUFFERED is not terminal"), (10**6, "no such event")]
    assert queue.counts() == before
    assert queue.state(live) == "BUFFERED"
    queue.audit()


def test_replay_filters_select_by_source_since_and_state(queue: Queue) -> None:
    a1, b1, p1 = queue.ingest(
        {"source": "pump-1", "fail": True},
        {"source": "pump-2", "fail": True},
        {"source": "pump-1"},
    )
    queue.drain()
    queue.at(2)
    [a2] = queue.ingest({"source": "pump-1", "fail": True})
    queue.drain()
    queue.at(3)

    def originals(**filters: Any) -> list[int]:
        return [original for original, _ in queue.app.replay(**filters).replayed]

    assert originals(source="pump-2") == [b1]
    assert originals(since="36h") == [a2]
    assert originals(state=State.PROCESSED, source="pump-1") == [p1]
    assert originals() == [a1]  # every FAILED_TERMINAL not replayed before
    assert originals(since="2025-06-16T00:00:00Z", force=True) == [a2]
    with pytest.raises(ValueError, match="--since"):
        queue.app.replay(since="last tuesday")
    with pytest.raises(ValueError, match="filter"):
        queue.app.replay(state=State.PROCESSED)
    with pytest.raises(ValueError, match="terminal"):
        queue.app.replay([a1], state=State.BUFFERED)
    queue.audit()


def test_a_replayed_copy_is_processed_and_the_audit_stays_clean(queue: Queue) -> None:
    failed = queue.ingest({"fail": True}, {"fail": True}, {})
    queue.drain()
    report = queue.at(1).app.replay()

    queue.drain()

    assert [original for original, _ in report.replayed] == failed[:2]
    for original, copy in report.replayed:
        assert queue.state(original) == "FAILED_TERMINAL"
        detail = queue.app.inspect(copy)
        assert (detail["state"], detail["attempts"]) == ("PROCESSED", 1)
        assert detail["result"] == {"ok": copy}
        assert detail["replay_of"] == original
    check = queue.app.check()
    assert check.ok, check.violations
    assert (check.counts["PROCESSED"], check.counts["FAILED_TERMINAL"]) == (3, 2)


@pytest.mark.slow
def test_replay_cli_replays_by_id_and_exits_1_when_a_named_event_is_skipped(
    sqlite_url: str, write_jsonl: WriteJsonl, make_event: MakeEvent
) -> None:
    q = Queue(sqlite_url, write_jsonl, make_event)
    [failed] = q.ingest({"fail": True})
    q.drain()
    [live] = q.ingest({})
    q.app.close()

    replayed = run_cli("replay", str(failed), db=sqlite_url)
    skipped = run_cli("replay", str(live), "999", "--json", db=sqlite_url)
    no_filter = run_cli("replay", "--state", "PROCESSED", db=sqlite_url)

    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {failed} as {live + 1}" in replayed.stdout
    assert skipped.returncode == 1, skipped.stderr
    assert json.loads(skipped.stdout) == {
        "replayed": [],
        "skipped": [
            {"event_id": live, "reason": "BUFFERED is not terminal"},
            {"event_id": 999, "reason": "no such event"},
        ],
    }
    assert no_filter.returncode == 2
    assert no_filter.stderr.startswith("error: ") and "Traceback" not in no_filter.stderr
    with Chronos(sqlite_url) as app:
        assert app.inspect(failed)["replays"] == [live + 1]
        assert app.check().ok


# -- purge ----------------------------------------------------------------------


class Aged:
    """Events of known ages: old terminal ones, old live ones and recent terminal ones."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        queue.at(0)
        self.old = queue.ingest({}, {"fail": True}, {}, {"fail": True})
        queue.drain()
        queue.at(40)
        self.recent = queue.ingest({}, {"fail": True})
        queue.drain()
        queue.at(0)  # accepted long ago, never processed: live, and old
        self.live = queue.ingest({}, {})
        queue.at(41)


def test_purge_dry_run_counts_without_removing(queue: Queue) -> None:
    aged = Aged(queue)
    before = queue.counts()

    report = queue.app.purge("30d", dry_run=True)

    assert report.dry_run is True
    assert report.before == T0 + 11 * DAY
    assert (report.events, report.transitions, report.storage_rows) == (4, 20, 2)
    assert report.by_state == {"PROCESSED": 2, "FAILED_TERMINAL": 2}
    assert queue.counts() == before
    assert queue.ids() >= set(aged.old)
    queue.audit()


def test_purge_removes_only_old_terminal_events_with_their_history_and_storage(
    queue: Queue,
) -> None:
    aged = Aged(queue)
    planned = queue.app.purge("30d", dry_run=True)

    report = queue.app.purge("30d")

    assert (report.events, report.transitions, report.storage_rows) == (
        planned.events,
        planned.transitions,
        planned.storage_rows,
    )
    assert report.by_state == planned.by_state
    assert queue.ids() == set(aged.recent + aged.live)
    assert not queue.ids(event_transitions, "event_id") & set(aged.old)
    assert not queue.ids(processed_events, "event_id") & set(aged.old)
    assert {queue.state(i) for i in aged.live} == {"BUFFERED"}
    assert len(queue.app.inspect(aged.live[0])["history"]) == 3
    assert queue.app.purge("30d").events == 0  # nothing left to remove
    queue.audit()


def test_purge_of_one_state_leaves_the_other(queue: Queue) -> None:
    aged = Aged(queue)

    report = queue.app.purge("30d", states=[State.FAILED_TERMINAL])

    assert report.by_state == {"FAILED_TERMINAL": 2}
    assert queue.ids() == set(aged.recent + aged.live + aged.old[0::2])
    queue.audit()


def test_purge_keeps_an_original_whose_replay_is_kept_and_removes_both_when_both_qualify(
    queue: Queue,
) -> None:
    x, y, z = queue.ingest({"fail": True}, {"fail": True}, {"fail": True})
    queue.drain()
    [(_, x_copy)] = queue.app.replay([x]).replayed
    queue.drain()  # x and its copy both end on day 0
    assert queue.app.inspect(x)["replays"] == [x_copy]
    queue.at(39)
    [(_, y_copy)] = queue.app.replay([y]).replayed
    queue.drain()  # y's copy ends on day 39
    [(_, z_copy)] = queue.app.replay([z]).replayed  # z's copy stays BUFFERED

    first = queue.at(41).app.purge("30d")

    assert first.events == 2
    assert queue.ids() == {y, y_copy, z, z_copy}
    queue.audit()

    second = queue.at(80).app.purge("30d")

    assert second.events == 2
    assert queue.ids() == {z, z_copy}
    assert queue.app.inspect(z)["replays"] == [z_copy]
    assert queue.state(z_copy) == "BUFFERED"
    queue.audit()


def test_purge_refuses_a_bad_duration_or_a_live_state(queue: Queue) -> None:
    Aged(queue)
    before = queue.counts()

    with pytest.raises(ValueError, match="--older-than"):
        queue.app.purge("a while")
    with pytest.raises(ValueError, match="terminal"):
        queue.app.purge("30d", states=[State.BUFFERED])

    assert queue.counts() == before


def test_purge_vacuum_gives_the_space_back_on_sqlite(
    sqlite_url: str, write_jsonl: WriteJsonl, make_event: MakeEvent
) -> None:
    queue = Queue(sqlite_url, write_jsonl, make_event)
    queue.ingest(*[{"pad": "x" * 500} for _ in range(500)])
    queue.drain()
    path = sa.engine.make_url(sqlite_url).database or ""
    pages_before = _pragma(path, "page_count")

    report = queue.at(31).app.purge("30d", vacuum=True)

    assert (report.events, report.vacuumed) == (500, True)
    assert _pragma(path, "freelist_count") == 0
    assert _pragma(path, "page_count") < pages_before / 4
    queue.audit()
    queue.app.close()


def _pragma(path: str, name: str) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        raw.close()


@pytest.mark.slow
def test_purge_cli_dry_run_then_purge_with_vacuum_and_bad_options(
    sqlite_url: str, write_jsonl: WriteJsonl, make_event: MakeEvent
) -> None:
    # The CLI runs on the real clock: events processed 100 days ago are old to it.
    long_ago = dt.datetime.now(dt.UTC).timestamp() - 100 * DAY
    queue = Queue(sqlite_url, write_jsonl, make_event)
    queue.clock.now = long_ago
    old = queue.ingest({}, {"fail": True}, {})
    queue.drain()
    queue.clock.now = long_ago + 99 * DAY
    recent = queue.ingest({})
    queue.drain()
    queue.app.close()

    dry = run_cli("purge", "--older-than", "30d", "--dry-run", "--json", db=sqlite_url)
    bad = run_cli("purge", "--older-than", "soon", db=sqlite_url)
    live = run_cli("purge", "--older-than", "30d", "--state", "BUFFERED", db=sqlite_url)
    real = run_cli("purge", "--older-than", "30d", "--vacuum", db=sqlite_url)

    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert (planned["dry_run"], planned["events"], planned["storage_rows"]) == (True, 3, 2)
    for result in (bad, live):
        assert result.returncode == 2, result.stdout
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "--older-than" in bad.stderr
    assert real.returncode == 0, real.stderr
    assert "removed 3 events" in real.stdout and "vacuumed" in real.stdout
    with Chronos(sqlite_url) as app:
        assert app.check().ok
        with app.engine.connect() as conn:
            assert list(conn.execute(sa.select(events.c.id)).scalars()) == recent
    assert old
