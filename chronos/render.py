"""Human-readable output for the CLI: tables and times. JSON output needs none of this."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from chronos.ingestion import IngestReport
from chronos.purge import PurgeReport
from chronos.replay import ReplayReport
from chronos.runner import WorkerReport

TIME_FIELDS = (
    "event_time",
    "available_at",
    "lease_expires_at",
    "created_at",
    "updated_at",
    "processed_at",
)


def iso(seconds: float | None) -> str:
    """Render Unix seconds as RFC 3339 UTC with milliseconds."""
    if seconds is None:
        return "-"
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(console: Console, detail: dict[str, Any]) -> None:
    """Print one event and its history."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in (
        "id",
        "state",
        "source",
        "key",
        "type",
        "event_time",
        "attempts",
        "available_at",
        "lease_owner",
        "lease_expires_at",
        "last_error",
        "created_at",
        "replay_of",
        "replays",
        "processed_at",
        "processed_by",
    ):
        if name not in detail:
            continue
        value = detail[name]
        if value is None or value == []:
            continue
        text = iso(value) if name in TIME_FIELDS else str(value)
        table.add_row(name, text)
    table.add_row("payload", json.dumps(detail["payload"], ensure_ascii=False))
    if detail.get("result") is not None:
        table.add_row("result", json.dumps(detail["result"], ensure_ascii=False))
    console.print(table)
    history = Table(title="history", title_justify="left")
    for column in ("at", "from", "to", "actor", "attempt"):
        history.add_column(column, no_wrap=True)
    history.add_column("detail", overflow="fold")
    for step in detail["history"]:
        history.add_row(
            iso(step["at"]),
            step["from_state"] or "-",
            step["to_state"],
            step["actor"],
            str(step["attempt"]),
            step["detail"] or "",
        )
    console.print(history)


def stats(console: Console, data: dict[str, Any]) -> None:
    """Print counts by state and the queue's health."""
    table = Table(show_header=True)
    table.add_column("state")
    table.add_column("events", justify="right")
    for state, count in data["counts"].items():
        table.add_row(state, f"{count:,}")
    table.add_row("total", f"{data['total']:,}", style="bold")
    console.print(table)
    age = data["oldest_waiting_age_s"]
    console.print(
        f"backlog {data['backlog']:,}  in flight {data['in_flight']:,}  "
        f"expired leases {data['expired_leases']:,}  "
        f"oldest waiting {data['oldest_waiting_id'] or '-'}"
        + (f" ({age:.1f} s)" if age is not None else "")
        + f"  processed in the last minute {data['processed_last_minute']:,}"
    )


def demo(console: Console, outcome: dict[str, Any], *, db_flag: str) -> None:
    """Print the demo's outcome table and where to look next."""
    table = Table(title=f"chronos demo: {outcome['database']}", title_justify="left")
    table.add_column("outcome")
    table.add_column("events", justify="right")
    for label, key in (
        ("lines read", "lines"),
        ("rejected lines", "rejected"),
        ("duplicates (same source and id)", "duplicates"),
        ("accepted", "accepted"),
        ("processed", "processed"),
        ("failed terminal", "failed_terminal"),
        ("not finished", "unfinished"),
    ):
        table.add_row(label, f"{outcome[key]:,}")
    console.print(table)
    for rejection in outcome["rejections"]:
        console.print(
            f"  rejected line {rejection['line_no']}: {rejection['reason']}", markup=False
        )
    balanced = outcome["accepted"] == outcome["processed"] + outcome["failed_terminal"]
    console.print(
        f"accepted {outcome['accepted']:,} = processed {outcome['processed']:,} + failed terminal "
        f"{outcome['failed_terminal']:,}: {'yes' if balanced else 'NO'}"
    )
    console.print("look next:")
    for label, key in (
        ("a retried event", "retried_then_processed"),
        ("a failed event", "failed_terminal"),
    ):
        if outcome["examples"][key] is not None:
            example = outcome["examples"][key]
            console.print(f"  {label + ':':<17} chronos --db {db_flag} inspect {example}")
    console.print(f"  {'the queue:':<17} chronos --db {db_flag} stats")


def check(console: Console, report: dict[str, Any]) -> None:
    """Print the audit: what was read, each violation, and the verdict."""
    console.print(
        f"checked {report['events']:,} events, {report['transitions']:,} transitions, "
        f"{report['storage_rows']:,} storage rows"
    )
    for lease in report["expired_leases"]:
        console.print(
            f"expired lease: event {lease['event_id']} held by {lease['lease_owner']} "
            f"since {iso(lease['expired_at'])} (any worker will recover it)",
            markup=False,
        )
    if report["ok"]:
        console.print("ok: every rule holds")
        return
    table = Table(title="violations", title_justify="left")
    for column in ("rule", "event", "detail"):
        table.add_column(column, overflow="fold")
    for violation in report["violations"]:
        event_id = violation["event_id"]
        table.add_row(
            violation["rule"], "-" if event_id is None else str(event_id), violation["detail"]
        )
    console.print(table)
    console.print(f"{len(report['violations']):,} violations")


def rejections(console: Console, report: IngestReport, *, most: int = 20) -> None:
    """Print the first rejected lines with their reasons (all of them go to --rejects)."""
    for rejection in report.rejections[:most]:
        console.print(f"line {rejection.line_no}: {rejection.reason}", markup=False)
    if report.rejected > most:
        console.print(f"... and {report.rejected - most:,} more rejected lines (see --rejects)")


def ingest(console: Console, report: IngestReport) -> None:
    """Print what an ingest accepted, and whether it resumed an earlier run."""
    if report.held_tail_bytes:
        console.print(
            f"the last line ({report.held_tail_bytes:,} bytes) has no newline and is not "
            "complete JSON yet: left for the next run of this file"
        )
    if report.resumed_at_line and not report.lines:
        console.print(
            f"nothing new: ingest #{report.run_id} already covered all "
            f"{report.resumed_at_line:,} lines of {report.input}",
            markup=False,
        )
    elif report.resumed_at_line:
        console.print(
            f"resumed interrupted ingest #{report.run_id} after line {report.resumed_at_line:,}"
        )
    console.print(
        f"accepted {report.accepted:,}  duplicates {report.duplicates:,}  "
        f"rejected {report.rejected:,}  ({report.lines:,} lines in {report.seconds:.1f} s)"
    )
    if report.resumed_at_line:
        console.print(
            f"whole input: accepted {report.total_accepted:,}  duplicates "
            f"{report.total_duplicates:,}  rejected {report.total_rejected:,}"
        )


def worker(console: Console, report: WorkerReport) -> None:
    """Print one worker's totals."""
    console.print(
        f"worker {report.name}: processed {report.processed:,}  retried {report.retried:,}  "
        f"failed terminal {report.failed_terminal:,}  recovered {report.recovered:,}  "
        f"released {report.released:,}  lost leases {report.lost_leases:,}  "
        f"({report.seconds:.1f} s)",
        markup=False,
    )


def replay(console: Console, errors: Console, report: ReplayReport) -> None:
    """Print each replayed original with its copy, and each skipped one with why."""
    for original, new in report.replayed:
        console.print(f"replayed {original} as {new}")
    for event_id, reason in report.skipped:
        errors.print(f"skipped {event_id}: {reason}", markup=False)
    console.print(f"replayed {len(report.replayed):,}  skipped {len(report.skipped):,}")


def purge(console: Console, report: PurgeReport) -> None:
    """Print what a purge removed, or would remove."""
    verb = "would remove" if report.dry_run else "removed"
    states = ", ".join(f"{k} {v:,}" for k, v in sorted(report.by_state.items())) or "nothing"
    console.print(
        f"{verb} {report.events:,} events ({states}), {report.transitions:,} transitions, "
        f"{report.storage_rows:,} storage rows last changed before {iso(report.before)}"
        + ("; vacuumed" if report.vacuumed else "")
    )
