"""`chronos demo`: the whole pipeline on a fresh SQLite file, in one command.

It ingests a bundled sample (a few bad lines and producer retries included), runs
worker processes until every event is terminal, and reports the outcome. The demo
handler fails some events on purpose, as its payload asks, to show retries and
terminal failures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from typing import Any

from chronos import errors
from chronos.handlers import Event, telemetry

SAMPLE = "sample.jsonl"
HANDLER = "chronos.demo:handle"
MAX_ATTEMPTS = 3


def handle(event: Event) -> dict[str, Any]:
    """The built-in telemetry handler, failing where the payload's `demo` field says."""
    mode = event.payload.get("demo")
    if mode == "flaky" and event.attempt == 1:
        raise errors.RetryableError("sensor gateway timed out (demo: fails once)")
    if mode == "broken":
        raise errors.TerminalError("reading is out of the sensor's range (demo)")
    if mode == "poison":
        raise ValueError("cannot decode reading (demo: fails every attempt)")
    return telemetry(event)


def sample_path() -> str:
    """The bundled sample file."""
    return str(resources.files("chronos") / "data" / SAMPLE)


def run_workers(url: str, *, workers: int) -> list[subprocess.CompletedProcess[str]]:
    """Run `workers` real worker processes with `--drain` until every event is terminal."""
    command = [
        sys.executable,
        "-m",
        "chronos",
        "--db",
        url,
        "worker",
        "--handler",
        HANDLER,
        "--drain",
        "--quiet",
        "--backoff",
        "0.05",
        "--max-attempts",
        str(MAX_ATTEMPTS),
        "--batch",
        "8",
    ]
    procs = [
        subprocess.Popen(
            [*command, "--name", f"demo-worker-{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CHRONOS_DB": url},
        )
        for n in range(1, workers + 1)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate()
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    failed = [p for p in done if p.returncode != 0]
    if failed:
        raise errors.ChronosError(
            f"a demo worker exited with {failed[0].returncode}: {failed[0].stderr.strip()}"
        )
    return done
