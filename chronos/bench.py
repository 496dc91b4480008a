"""`chronos bench`: ingest and drain throughput, as ratios to baselines run alongside.

Every figure comes from real processes on fresh SQLite files in a temporary folder:
wall-clock time, and each child's own peak RSS from `os.wait4`. The baselines run in
the same call, interleaved with Chronos's runs so that drift on a noisy machine hits
both alike: bare `sqlite3` inserts and plain `json.loads` for ingest, the smallest
worker count for drain. Medians of the repeats are reported.

The baselines run this file as a script (`python -P bench.py sqlite|parse ...`) so that
they stay bare Python; that is why only the standard library is imported at the top.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

    from chronos.handlers import Event

Progress = Callable[[str], None]
HANDLERS = {"noop": "chronos.bench:noop", "sleep1ms": "chronos.bench:sleep_1ms"}
DEFAULT_EVENTS = {"ingest": 1_000_000, "drain": 100_000}
BASELINE_BATCH = 2000
_SOURCES = [f"{kind}-{n}" for kind in ("pump", "boiler", "chiller", "fan") for n in range(1, 6)]
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_RSS_PER_MB = 1024 * 1024 if sys.platform == "darwin" else 1024


def noop(event: Event) -> None:
    """Do nothing: the drain then measures Chronos's own cost per event."""


def sleep_1ms(event: Event) -> None:
    """Wait 1 ms, like a quick call to another service."""
    time.sleep(0.001)


def write_events(path: str, count: int, *, seed: int = 7) -> None:
    """Write `count` telemetry lines: 2/3 with producer ids, RFC 3339 and Unix timestamps."""
    rng = random.Random(seed)
    start = 1_795_000_000.0
    plus_two = dt.timezone(dt.timedelta(hours=2))
    with open(path, "w", encoding="utf-8") as out:
        for n in range(count):
            source = rng.choice(_SOURCES)
            moment = start + n * 0.25
            stamp: str | float
            if n % 4 == 0:
                stamp = dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")
                stamp = stamp.replace("+00:00", "Z")
            elif n % 4 == 1:
                stamp = dt.datetime.fromtimestamp(moment, plus_two).isoformat()
            else:
                stamp = int(moment) if n % 4 == 2 else moment
            line: dict[str, object] = {"timestamp": stamp, "source": source}
            if n % 3:
                line["id"] = f"{source}-{n}"
            kind = ("temperature", "pressure", "vibration")[n % 3]
            line["type"] = kind
            line["value"] = round(rng.uniform(10, 90), 2)
            line["unit"] = {"temperature": "C", "pressure": "kPa", "vibration": "mm/s"}[kind]
            if n % 5 == 0:
                line["tags"] = {"site": f"plant-{n % 3}", "firmware": "1.4.2"}
            out.write(json.dumps(line) + "\n")


@dataclass
class _Exit:
    code: int
    peak_rss_mb: float
    stdout: str
    stderr: str


def _run_all(commands: Sequence[list[str]]) -> tuple[float, list[_Exit]]:
    """Start every command at once, wait for all; return the wall seconds and each exit."""
    files = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in commands]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=out, stderr=err)
        for cmd, (out, err) in zip(commands, files, strict=True)
    ]
    exits = []
    for proc, (out, err) in zip(procs, files, strict=True):
        # wait4 reaps this one child and returns its own rusage, hence its own peak RSS.
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        exits.append(_Exit(proc.returncode, usage.ru_maxrss / _RSS_PER_MB, *texts))
    return time.perf_counter() - started, exits


def _check(done: _Exit, what: str) -> None:
    if done.code != 0:
        from chronos.errors import ChronosError  # not at the top: see the module docstring

        raise ChronosError(f"{what} exited with {done.code}: {done.stderr.strip()[-2000:]}")


def _prepare(path: str, data: str | None = None) -> None:
    """Migrate a fresh database through the facade; ingest `data` into it, untimed."""
    from chronos.app import Chronos  # not at the top: app imports this module

    with Chronos(path, synchronous="NORMAL") as chronos:  # untimed set-up: durability moot
        chronos.migrate()
        if data is not None:
            chronos.ingest(data)


def _chronos(path: str, synchronous: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "chronos", "--db", path, "--sync", synchronous, *args]


def _rate(events: int, seconds: float | None) -> float:
    return events / seconds if seconds else 0.0


def run(
    kind: str,
    *,
    events: int | None = None,
    repeat: int = 3,
    workers: Sequence[int] | str = (1, 2, 4),
    handler: str = "both",
    synchronous: str = "FULL",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the `ingest` or `drain` benchmark; the result says `ok` if every check held."""
    if kind not in DEFAULT_EVENTS:
        raise ValueError("bench measures ingest or drain")
    count = DEFAULT_EVENTS[kind] if events is None else events
    if count < 1 or repeat < 1:
        raise ValueError("--events and --repeat must be at least 1")
    if isinstance(workers, str):
        try:
            workers = [int(w) for w in workers.split(",")]
        except ValueError:
            raise ValueError("--workers takes counts like 1,2,4") from None
    if not workers or min(workers) < 1:
        raise ValueError("--workers takes counts like 1,2,4")
    if handler not in (*HANDLERS, "both"):
        raise ValueError(f"--handler is one of {', '.join(HANDLERS)} or both")
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as folder:
        data = os.path.join(folder, "events.jsonl")
        say(f"writing {count:,} telemetry lines to {data}")
        write_events(data, count)
        result: dict[str, Any] = {
            "kind": kind,
            "events": count,
            "repeat": repeat,
            "synchronous": synchronous,
            "input_mb": round(os.path.getsize(data) / 1e6, 1),
            "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
        }
        if kind == "ingest":
            result.update(_ingest(folder, data, count, repeat, synchronous, say))
        else:
            handlers = list(HANDLERS) if handler == "both" else [handler]
            widths = sorted(set(workers))
            result.update(_drain(folder, data, count, repeat, synchronous, widths, handlers, say))
    return result


def _ingest(
    folder: str, data: str, count: int, repeat: int, synchronous: str, say: Progress
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    ok = True
    for n in range(1, repeat + 1):
        for subject in ("parse", "sqlite", "chronos"):
            path = os.path.join(folder, f"{subject}-{n}.db")
            if subject == "parse":
                command = [sys.executable, "-P", __file__, "parse", data]
            elif subject == "sqlite":
                command = [sys.executable, "-P", __file__, "sqlite", data, path, synchronous]
            else:
                _prepare(path)
                command = _chronos(path, synchronous, "ingest", data, "--json")
            seconds, (done,) = _run_all([command])
            _check(done, f"the {subject} run")
            row = {"subject": subject, "run": n, "seconds": round(seconds, 3)}
            row["events_per_s"] = round(_rate(count, seconds))
            row["peak_rss_mb"] = round(done.peak_rss_mb, 1)
            if subject == "chronos":
                report = json.loads(done.stdout)
                row["accepted"] = report["accepted"]
                row["in_process_events_per_s"] = round(_rate(count, report["seconds"]))
                ok = ok and report["accepted"] == count
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            say(
                f"run {n}/{repeat} {subject:8} {seconds:8.2f} s  "
                f"{row['events_per_s']:>9,} events/s  peak RSS {row['peak_rss_mb']:.0f} MB"
            )
            runs.append(row)
    medians = {
        subject: {
            field: statistics.median(r[field] for r in runs if r["subject"] == subject)
            for field in ("events_per_s", "peak_rss_mb")
        }
        for subject in ("chronos", "sqlite", "parse")
    }
    ratios = {
        f"chronos/{base}": {
            field: round(medians["chronos"][field] / medians[base][field], 3)
            for field in ("events_per_s", "peak_rss_mb")
        }
        for base in ("sqlite", "parse")
    }
    return {"runs": runs, "medians": medians, "ratios": ratios, "ok": ok}


def _drain(
    folder: str,
    data: str,
    count: int,
    repeat: int,
    synchronous: str,
    workers: list[int],
    handlers: list[str],
    say: Progress,
) -> dict[str, Any]:
    template = os.path.join(folder, "template.db")
    say(f"ingesting {count:,} events once (untimed); each run starts from a copy")
    _prepare(template, data)
    path = os.path.join(folder, "drain.db")
    runs: list[dict[str, Any]] = []
    for handler in handlers:
        for n in range(1, repeat + 1):
            for width in workers:  # interleaved, so drift hits every worker count alike
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
                    if suffix != "-shm" and os.path.exists(template + suffix):
                        shutil.copyfile(template + suffix, path + suffix)
                worker = ["worker", "--drain", "--quiet", "--handler", HANDLERS[handler]]
                commands = [
                    _chronos(path, synchronous, *worker, "--name", f"bench-{i}")
                    for i in range(1, width + 1)
                ]
                seconds, exits = _run_all(commands)
                for done in exits:
                    _check(done, "a worker")
                row = {"handler": handler, "workers": width, "run": n, **_outcome(path, count)}
                row["seconds"] = round(seconds, 3)
                row["events_per_s"] = round(_rate(count, seconds))
                row["peak_rss_mb"] = round(max(done.peak_rss_mb for done in exits), 1)
                say(
                    f"{handler} run {n}/{repeat} workers={width}: {seconds:.2f} s wall, "
                    f"{row['events_per_s']:,} events/s wall, "
                    f"{row['window_events_per_s']:,} events/s in the drain window, "
                    f"exactly once: {row['exactly_once']}"
                )
                runs.append(row)
    medians = []
    for handler in handlers:
        base: dict[str, float] = {}
        for width in workers:
            mine = [r for r in runs if r["handler"] == handler and r["workers"] == width]
            row = {"handler": handler, "workers": width, "baseline_workers": workers[0]}
            for field in ("events_per_s", "window_events_per_s", "peak_rss_mb"):
                row[field] = statistics.median(r[field] for r in mine)
                base.setdefault(field, row[field])
                row[f"{field}_ratio"] = round(row[field] / base[field], 3) if base[field] else 0
            row["exactly_once"] = all(r["exactly_once"] for r in mine)
            medians.append(row)
    return {"runs": runs, "medians": medians, "ok": all(r["exactly_once"] for r in runs)}


def _outcome(path: str, count: int) -> dict[str, Any]:
    """Check every event was PROCESSED exactly once; measure the window workers drained in."""
    with sqlite3.connect(path) as conn:
        stored, processed, total, claims, entered, first, last = conn.execute(
            "SELECT (SELECT count(*) FROM processed_events),"
            " (SELECT count(*) FROM events WHERE state = 'PROCESSED'),"
            " (SELECT count(*) FROM events),"
            " (SELECT count(*) FROM event_transitions WHERE to_state = 'PROCESSING'),"
            " (SELECT count(*) FROM event_transitions WHERE to_state = 'PROCESSED'),"
            " (SELECT min(at) FROM event_transitions WHERE to_state = 'PROCESSING'),"
            " (SELECT max(processed_at) FROM processed_events)"
        ).fetchone()
    window = (last - first) if first is not None and last is not None else None
    return {
        "processed": stored,
        "claims": claims,
        "exactly_once": stored == processed == total == entered == count,
        "window_s": round(window, 3) if window else None,
        "window_events_per_s": round(_rate(count, window)),
    }


def tables(result: dict[str, Any]) -> list[Table]:
    """Render a benchmark result as rich tables: every run, then the medians."""
    from rich.table import Table  # not at the top: see the module docstring

    runs = Table(title=f"chronos bench {result['kind']}: {result['events']:,} events, every run")
    summary = Table(title=f"medians of {result['repeat']} runs ({result['cpus']} CPUs)")
    if result["kind"] == "ingest":
        keys = ["subject", "run", "seconds", "events_per_s", "peak_rss_mb"]
        for key in keys:
            runs.add_column(key, justify="left" if key == "subject" else "right")
        for run in result["runs"]:
            runs.add_row(*(_cell(run[k]) for k in keys))
        for col in ("", "events/s", "peak RSS MB", "events/s ratio", "RSS ratio"):
            summary.add_column(col, justify="right")
        for subject, figures in result["medians"].items():
            ratio = result["ratios"].get(f"chronos/{subject}", {})
            cells = [figures["events_per_s"], figures["peak_rss_mb"]]
            cells += [ratio.get("events_per_s", "-"), ratio.get("peak_rss_mb", "-")]
            summary.add_row(subject, *map(_cell, cells))
        summary.caption = "ratios are chronos / that baseline"
    else:
        keys = ["handler", "workers", "run", "seconds", "events_per_s", "window_s"]
        keys += ["window_events_per_s", "claims", "peak_rss_mb", "exactly_once"]
        for key in keys:
            runs.add_column(key, justify="left" if key == "handler" else "right")
        for run in result["runs"]:
            runs.add_row(*(_cell(run[k]) for k in keys))
        keys = ["handler", "workers", "events_per_s", "events_per_s_ratio"]
        keys += ["window_events_per_s", "window_events_per_s_ratio", "exactly_once"]
        for key in keys:
            summary.add_column(key, justify="left" if key == "handler" else "right")
        for row in result["medians"]:
            summary.add_row(*(_cell(row[k]) for k in keys))
        summary.caption = "ratios are to the fewest workers with the same handler"
    summary.caption += "; every event PROCESSED exactly once" if result["ok"] else "; CHECK FAILED"
    return [runs, summary]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _baseline_sqlite(data: str, path: str, synchronous: str) -> None:
    """Insert each line as it is into one table, one commit per batch."""
    if synchronous not in ("FULL", "NORMAL"):
        raise SystemExit(f"bad synchronous {synchronous!r}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT)")
    with open(data, encoding="utf-8") as lines:
        while batch := [(line.rstrip("\n"),) for line in itertools.islice(lines, BASELINE_BATCH)]:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events (payload) VALUES (?)", batch)
            conn.execute("COMMIT")
    conn.close()


def _baseline_parse(data: str) -> None:
    """Parse each line with json.loads and nothing more."""
    with open(data, "rb") as lines:
        for line in lines:
            json.loads(line)


if __name__ == "__main__":
    if sys.argv[1] == "sqlite":
        _baseline_sqlite(*sys.argv[2:5])
    else:
        _baseline_parse(sys.argv[2])
