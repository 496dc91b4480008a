"""`kill -9` during `chronos ingest`, then the same command again: every line exactly once.

Real processes on a real database: the ingest is started with `python -m chronos`,
killed with SIGKILL once enough events are committed (polled, with a deadline), and
re-run to completion. The input mixes lines with and without producer ids,
byte-identical lines, repeated ids and (for the rejects test) bad lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import run_cli

from chronos.db import READ_ONLY, create_engine, resolve_url
from chronos.schema import event_transitions, events, ingest_runs

pytestmark = pytest.mark.slow

DEADLINE_S = 60.0
POLL_S = 0.005


@dataclass
class Input:
    """A generated input file and what ingesting it must produce."""

    path: Path
    lines: int
    event_lines: set[int] = field(default_factory=set)  # lines that become events
    duplicate_lines: set[int] = field(default_factory=set)  # repeats of an earlier id
    bad_lines: set[int] = field(default_factory=set)


def _write_input(path: Path, lines: int, *, bad_every: int = 0) -> Input:
    """Write `lines` JSON Lines: a third without id (many byte-identical), repeated ids."""
    spec = Input(path, lines)
    last_with_id = ""
    with path.open("w", encoding="utf-8") as handle:
        for n in range(1, lines + 1):
            if bad_every and n % bad_every == 0:
                text = f'{{"timestamp": "not a time", "line": {n}}}'
                spec.bad_lines.add(n)
            elif n % 3 == 0:
                # Only five distinct texts: thousands of byte-identical lines, all distinct events.
                text = json.dumps({"timestamp": 1767225600, "source": "probe", "v": n % 5})
                spec.event_lines.add(n)
            elif n % 10 == 1 and last_with_id:
                text = last_with_id
                spec.duplicate_lines.add(n)
            else:
                text = json.dumps(
                    {"timestamp": 1767225600 + n, "source": "probe", "id": f"k{n}", "v": n}
                )
                last_with_id = text
                spec.event_lines.add(n)
            handle.write(text + "\n")
    return spec


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Input:
    return _write_input(tmp_path_factory.mktemp("crash") / "telemetry.jsonl", 60_000)


def _count_events(engine: sa.Engine) -> int:
    with engine.connect().execution_options(**READ_ONLY) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())


def _more_events_than(count: int) -> Callable[[sa.Engine], bool]:
    return lambda engine: _count_events(engine) > count


def _committed_rejects(engine: sa.Engine) -> int:
    with engine.connect().execution_options(**READ_ONLY) as conn:
        latest = sa.select(ingest_runs.c.rejected).order_by(ingest_runs.c.id.desc()).limit(1)
        return int(conn.execute(latest).scalar() or 0)


def _rejects_written_but_not_committed(rejects: Path, *, after: int) -> Callable[[sa.Engine], bool]:
    """True while the ingest has written rejects it has not committed, past `after` committed."""

    def check(engine: sa.Engine) -> bool:
        # File first, then the database: if the file is still ahead of the committed
        # count read afterwards, the commit covering those lines has not happened yet.
        written = rejects.read_bytes().count(b"\n") if rejects.exists() else 0
        committed = _committed_rejects(engine)
        return committed > after and written > committed

    return check


def _start_and_kill(url: str, args: list[str], *, when: Callable[[sa.Engine], bool]) -> int:
    """Start the ingest and SIGKILL it as soon as `when` holds; return the events committed."""
    command = [sys.executable, "-m", "chronos", "--db", url, "ingest", *args]
    engine = create_engine(resolve_url(url))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not when(engine):
            if process.poll() is not None:
                pytest.fail(
                    f"ingest exited ({process.returncode}) before the kill point, with "
                    f"{_count_events(engine)} events: {process.stderr.read()!r}"  # type: ignore[union-attr]
                )
            if time.monotonic() > deadline:
                pytest.fail(f"kill point not reached after {DEADLINE_S} s")
            time.sleep(POLL_S)
        process.kill()
        process.wait()
        committed = _count_events(engine)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
        engine.dispose()
    assert process.returncode == -9, "the ingest finished before it could be killed"
    return committed


def _assert_every_line_exactly_once(url: str, spec: Input) -> None:
    engine = create_engine(resolve_url(url))
    try:
        with engine.connect().execution_options(**READ_ONLY) as conn:
            rows = conn.execute(
                sa.select(events.c.ingest_run_id, events.c.line_no, events.c.state)
            ).all()
            history = conn.execute(
                sa.select(sa.func.count()).select_from(event_transitions)
            ).scalar_one()
            runs = conn.execute(sa.select(ingest_runs).where(ingest_runs.c.lines > 0)).all()
    finally:
        engine.dispose()
    line_numbers = [row.line_no for row in rows]
    assert len(rows) == len(spec.event_lines)
    assert len(set(line_numbers)) == len(line_numbers), "a line was accepted twice"
    assert set(line_numbers) == spec.event_lines
    assert {row.ingest_run_id for row in rows} == {runs[0].id}
    assert {row.state for row in rows} == {"BUFFERED"}
    assert history == 3 * len(rows)  # RECEIVED, ACCEPTED, BUFFERED: nothing half-done
    [run] = runs
    assert run.lines == spec.lines
    assert run.finished_at is not None
    assert (run.accepted, run.duplicates, run.rejected) == (
        len(spec.event_lines),
        len(spec.duplicate_lines),
        len(spec.bad_lines),
    )


@pytest.mark.parametrize(
    ("backend", "lines", "kill_points"),
    [
        pytest.param("sqlite", 60_000, [0.0], id="sqlite-kill-after-first-commit"),
        pytest.param("sqlite", 60_000, [0.5, 0.8], id="sqlite-kill-past-half-and-again"),
        pytest.param("postgresql", 8_000, [0.3], id="postgresql-kill", marks=pytest.mark.postgres),
    ],
)
def test_killed_ingest_rerun_accepts_every_line_exactly_once(
    request: pytest.FixtureRequest,
    big_input: Input,
    tmp_path: Path,
    backend: str,
    lines: int,
    kill_points: list[float],
) -> None:
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    spec = big_input if lines == big_input.lines else _write_input(tmp_path / "t.jsonl", lines)
    args = [str(spec.path), "--json"]

    for fraction in kill_points:
        committed = _start_and_kill(
            url, args, when=_more_events_than(int(fraction * len(spec.event_lines)))
        )
        assert 0 < committed < len(spec.event_lines)
    result = run_cli("ingest", *args, db=url)

    assert result.returncode == 0, result.stderr
    _assert_every_line_exactly_once(url, spec)
    summary = json.loads(result.stdout)
    assert summary["resumed"] is True
    assert 0 < summary["resumed_at_line"] < spec.lines
    assert summary["total_accepted"] == len(spec.event_lines)
    assert summary["total_duplicates"] == len(spec.duplicate_lines)


def test_killed_ingest_rerun_writes_each_rejected_line_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    spec = _write_input(tmp_path / "mixed.jsonl", 20_000, bad_every=37)
    rejects = tmp_path / "rejects.jsonl"
    args = [str(spec.path), "--rejects", str(rejects)]

    # Kill, twice, after some progress and while rejects are written but their batch is
    # not committed yet: the re-run must drop those lines from the file and read them again.
    engine = create_engine(resolve_url(sqlite_url))
    try:
        for _ in range(2):
            after = _committed_rejects(engine)
            committed = _start_and_kill(
                sqlite_url, args, when=_rejects_written_but_not_committed(rejects, after=after)
            )
            assert committed < len(spec.event_lines)
    finally:
        engine.dispose()
    result = run_cli("ingest", *args, db=sqlite_url)

    assert result.returncode == 1, result.stderr  # lines were rejected
    records = [json.loads(line) for line in rejects.read_text("utf-8").splitlines()]
    numbers = [record["line_no"] for record in records]
    assert numbers == sorted(spec.bad_lines)
    assert all("timestamp" in record["reason"] for record in records)
    assert all(record["raw"].startswith('{"timestamp": "not a time"') for record in records)
    _assert_every_line_exactly_once(sqlite_url, spec)
    assert "resumed interrupted ingest" in result.stdout
