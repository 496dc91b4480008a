"""`chronos bench`: ingest and drain throughput, as ratios to baselines run alongside.

Every figure comes from real processes on fresh SQLite files in a temporary folder:
wall-clock time and each process's peak RSS. The baselines run in the same call,
interleaved with Chronos's runs so that drift on a noisy machine hits both alike:
bare Python inserting the lines with `sqlite3`, and bare Python parsing them with
`json.loads`, for ingest; the fewest workers, for drain. Medians of the repeats count.
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
from typing import Any

from rich import box
from rich.table import Table

from chronos.errors import ChronosError
from chronos.handlers import Event

Progress = Callable[[str], None]
HANDLERS = {"noop": "chronos.bench:noop", "sleep1ms": "chronos.bench:sleep_1ms"}
DEFAULT_EVENTS = {"ingest": 1_000_000, "drain": 100_000}
_SOURCES = [f"{kind}-{n}" for kind in ("pump", "boiler", "chiller", "fan") for n in range(1, 6)]
_UNITS = {"temperature": "C", "pressure": "kPa", "vibration": "mm/s"}
_RSS_PER_MB = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes or KiB

# On Linux a child's ru_maxrss also counts the process it was spawned from, before
# exec (vfork shares its memory), so a child of this process never reads below our
# own RSS. Each measured command therefore starts from this bare launcher, which
# forks, execs it and writes wait4's ru_maxrss to a file: its floor is about 5 MB.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
# The baselines: bare Python, no Chronos import, the same input file.
_SQLITE_BASELINE = """import itertools, sqlite3, sys
data, path, synchronous = sys.argv[1:]
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=" + {"FULL": "FULL", "NORMAL": "NORMAL"}[synchronous])
conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT)")
with open(data, encoding="utf-8") as lines:
    while batch := [(line.rstrip("\\n"),) for line in itertools.islice(lines, 2000)]:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (payload) VALUES (?)", batch)
        conn.execute("COMMIT")
"""
_PARSE_BASELINE = """import json, sys
with open(sys.argv[1], "rb") as lines:
    for line in lines:
        json.loads(line)
"""


def noop(event: Event) -> None:
    """Do nothing: the drain then measures Chronos's own cost per event."""


def sleep_1ms(event: Event) -> None:
    """Wait 1 ms, like a quick call to another service."""
    time.sleep(0.001)


def write_events(path: str, count: int, *, seed: int = 7) -> None:
    """Write `count` telemetry lines: 2/3 with producer ids, RFC 3339 and Unix timestamps."""
    rng = random.Random(seed)
    plus_two = dt.timezone(dt.timedelta(hours=2))
    with open(path, "w", encoding="utf-8") as out:
        for n in range(count):
            moment = 1_795_000_000.0 + n * 0.25
            stamp: str | float = int(moment) if n % 4 == 2 else moment
            if n % 4 == 0:
                stamp = dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")
                stamp = stamp.replace("+00:00", "Z")
            elif n % 4 == 1:
                stamp = dt.datetime.fromtimestamp(moment, plus_two).isoformat()
            source = rng.choice(_SOURCES)
            kind = ("temperature", "pressure", "vibration")[n % 3]
            line: dict[str, object] = {"timestamp": stamp, "source": source, "type": kind}
            if n % 3:
                line["id"] = f"{source}-{n}"
            line.update(value=round(rng.uniform(10, 90), 2), unit=_UNITS[kind])
            if n % 5 == 0:
                line["tags"] = {"site": f"plant-{n % 3}", "firmware": "1.4.2"}
            out.write(json.dumps(line) + "\n")


def _run_all(commands: Sequence[list[str]], folder: str) -> tuple[float, list[dict[str, Any]]]:
    """Start every command at once and wait for all; return the wall seconds and each exit."""
    logs = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in commands]
    rss = [os.path.join(folder, f"rss-{n}") for n in range(len(commands))]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, path, *cmd], stdout=o, stderr=e
        )
        for cmd, path, (o, e) in zip(commands, rss, logs, strict=True)
    ]
    codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - started
    exits = []
    for code, path, (o, e) in zip(codes, rss, logs, strict=True):
        texts = []
        for handle in (o, e):
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", "replace"))
            handle.close()
        with open(path) as peak:
            mb = int(peak.read() or 0) / _RSS_PER_MB
        exits.append({"code": code, "peak_rss_mb": mb, "stdout": texts[0], "stderr": texts[1]})
        if code != 0:
            raise ChronosError(f"a measured process exited with {code}: {texts[1][-2000:]}")
    return seconds, exits


def _prepare(path: str, data: str | None = None) -> None:
    """Migrate a fresh database through the facade; ingest `data` into it, untimed."""
    from chronos.app import Chronos  # here, not at the top: app imports this module

    with Chronos(path, synchronous="NORMAL") as chronos:  # untimed set-up: durability moot
        chronos.migrate()
        if data is not None:
            chronos.ingest(data)


def _remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


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
    try:
        widths = sorted(
            {int(w) for w in (workers.split(",") if isinstance(workers, str) else workers)}
        )
    except ValueError:
        raise ValueError("--workers takes counts like 1,2,4") from None
    if not widths or widths[0] < 1:
        raise ValueError("--workers takes counts like 1,2,4")
    if handler not in (*HANDLERS, "both"):
        raise ValueError(f"--handler is one of {', '.join(HANDLERS)} or both")
    with tempfile.TemporaryDirectory(prefix="chronos-bench-") as folder:
        bench = _Bench(folder, count, repeat, synchronous, progress or (lambda _line: None))
        result: dict[str, Any] = {"kind": kind, "events": count, "repeat": repeat}
        result.update(synchronous=synchronous, cpus=os.cpu_count(), sqlite=sqlite3.sqlite_version)
        result["input_mb"] = round(os.path.getsize(bench.data) / 1e6, 1)
        if kind == "ingest":
            result.update(bench.ingest())
        else:
            result.update(bench.drain(widths, list(HANDLERS) if handler == "both" else [handler]))
    return result


class _Bench:
    """One benchmark call: its temporary folder, its input file and its settings."""

    def __init__(self, folder: str, count: int, repeat: int, synchronous: str, say: Progress):
        self.folder, self.count, self.repeat, self.say = folder, count, repeat, say
        self.synchronous = synchronous
        self.data = os.path.join(folder, "events.jsonl")
        say(f"writing {count:,} telemetry lines to {self.data}")
        write_events(self.data, count)

    def _chronos(self, path: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "chronos", "--db", path, "--sync", self.synchronous, *args]

    def ingest(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        path = os.path.join(self.folder, "ingest.db")
        for n in range(1, self.repeat + 1):
            for subject in ("parse", "sqlite", "chronos"):
                _remove(path)
                command = [sys.executable, "-c", _PARSE_BASELINE, self.data]
                if subject == "sqlite":
                    command = [sys.executable, "-c", _SQLITE_BASELINE, self.data, path]
                    command.append(self.synchronous)
                elif subject == "chronos":
                    _prepare(path)
                    command = self._chronos(path, "ingest", self.data, "--json")
                seconds, (done,) = _run_all([command], self.folder)
                row = {"subject": subject, "run": n, "seconds": round(seconds, 3)}
                row["events_per_s"] = round(self.count / seconds)
                row["peak_rss_mb"] = round(done["peak_rss_mb"], 1)
                if subject == "chronos":
                    row["accepted"] = json.loads(done["stdout"])["accepted"]
                self.say(
                    f"run {n}/{self.repeat} {subject:8} {seconds:8.2f} s  "
                    f"{row['events_per_s']:>9,} events/s  peak RSS {row['peak_rss_mb']:.0f} MB"
                )
                runs.append(row)
        _remove(path)
        medians = _medians(runs, ("subject",), ("events_per_s", "peak_rss_mb"))
        for row in medians:  # chronos / that row, the medians of this same call
            row["chronos_speed_ratio"] = round(medians[-1]["events_per_s"] / row["events_per_s"], 3)
            row["chronos_rss_ratio"] = round(medians[-1]["peak_rss_mb"] / row["peak_rss_mb"], 3)
        ok = all(r["accepted"] == self.count for r in runs if r["subject"] == "chronos")
        return {"runs": runs, "medians": medians, "ok": ok}

    def drain(self, widths: list[int], handlers: list[str]) -> dict[str, Any]:
        template = os.path.join(self.folder, "template.db")
        path = os.path.join(self.folder, "drain.db")
        self.say(f"ingesting {self.count:,} events once (untimed); each run starts from a copy")
        _prepare(template, self.data)
        runs: list[dict[str, Any]] = []
        for handler, n, width in itertools.product(handlers, range(1, self.repeat + 1), widths):
            _remove(path)  # worker counts interleave, so drift hits each alike
            for suffix in ("", "-wal"):
                if os.path.exists(template + suffix):
                    shutil.copyfile(template + suffix, path + suffix)
            worker = ["worker", "--drain", "--quiet", "--handler", HANDLERS[handler]]
            seconds, exits = _run_all(
                [self._chronos(path, *worker, "--name", f"bench-{i}") for i in range(width)],
                self.folder,
            )
            row = {"handler": handler, "workers": width, "run": n, "seconds": round(seconds, 3)}
            row["events_per_s"] = round(self.count / seconds)
            row.update(_outcome(path, self.count))
            row["peak_rss_mb"] = round(max(done["peak_rss_mb"] for done in exits), 1)
            self.say(
                f"{handler} run {n}/{self.repeat} workers={width}: {seconds:.2f} s, "
                f"{row['events_per_s']:,} events/s wall, {row['window_events_per_s']:,} "
                f"in the drain window, exactly once: {row['exactly_once']}"
            )
            runs.append(row)
        fields = ("events_per_s", "window_events_per_s", "peak_rss_mb")
        medians = _medians(runs, ("handler", "workers"), fields, flags=("exactly_once",))
        for n, row in enumerate(medians):  # the fewest workers, same handler: the baseline
            base = next(m for m in medians if m["handler"] == row["handler"])
            ratios = {f"{f}_ratio": round(row[f] / base[f], 3) for f in fields[:2] if base[f]}
            medians[n] = {**row, **ratios}  # events/s and the drain window's, vs the baseline
        return {"runs": runs, "medians": medians, "ok": all(r["exactly_once"] for r in runs)}


def _medians(
    runs: list[dict[str, Any]],
    keys: tuple[str, ...],
    fields: tuple[str, ...],
    *,
    flags: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """For each group of runs alike in `keys`: the median of `fields`, all() of `flags`."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run)
    return [
        {
            **dict(zip(keys, group, strict=True)),
            **{field: statistics.median(r[field] for r in rows) for field in fields},
            **{flag: all(r[flag] for r in rows) for flag in flags},
        }
        for group, rows in groups.items()
    ]


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
    conn.close()  # the context manager only ends the transaction
    window = last - first if first is not None and last is not None else 0.0
    return {
        "window_s": round(window, 3),
        "window_events_per_s": round(count / window) if window > 0 else 0,
        "claims": claims,
        "exactly_once": stored == processed == total == entered == count,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    """Render a benchmark result as rich tables: every run, then the medians."""
    what = f"chronos bench {result['kind']}, {result['events']:,} events"
    if result["kind"] == "ingest":
        note = "ratios: chronos / that row's median"
    else:
        note = (
            "ev/s: events per wall-clock second, start-up included; window: first claim to "
            f"last result, in the database. Ratios: to {result['medians'][0]['workers']} "
            "worker(s) with the same handler"
        )
    check = "every event accepted" if result["kind"] == "ingest" else "every event processed once"
    note += f"; {check}: {'yes' if result['ok'] else 'NO'}"
    return [
        _table(f"{what}: every run", result["runs"]),
        _table(
            f"{what}: medians of {result['repeat']} runs, {result['cpus']} CPUs",
            result["medians"],
            note,
        ),
    ]


_LABELS = {  # short, so that a drain table fits 80 columns
    "seconds": "wall s",
    "events_per_s": "ev/s",
    "window_s": "window s",
    "window_events_per_s": "window ev/s",
    "events_per_s_ratio": "ev/s ratio",
    "window_events_per_s_ratio": "window ratio",
    "exactly_once": "once",
    "peak_rss_mb": "RSS MB",
    "chronos_speed_ratio": "chronos ev/s ratio",
    "chronos_rss_ratio": "chronos RSS ratio",
}


def _table(title: str, rows: list[dict[str, Any]], caption: str | None = None) -> Table:
    table = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )
    keys = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(key, "-")) for key in keys] for row in rows]
    for n, key in enumerate(keys):
        table.add_column(
            _LABELS.get(key, key.replace("_", " ")),
            justify="left" if key in ("subject", "handler") else "right",
            min_width=max(len(line[n]) for line in cells),  # fold headers, never figures
            overflow="fold",
        )
    for line in cells:
        table.add_row(*line)
    return table


def _cell(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and value < 100:
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{value:,.0f}"
