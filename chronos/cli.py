"""The `chronos` command: thin wrappers over `Chronos`, with one error boundary."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from chronos import render
from chronos.app import Chronos
from chronos.bench import tables as bench_tables
from chronos.errors import ChronosError
from chronos.handlers import DEFAULT_HANDLER
from chronos.ingestion import DEFAULT_MAX_EVENT_BYTES
from chronos.retry import DEFAULT_MAX_ATTEMPTS
from chronos.runner import DEFAULT_BATCH
from chronos.states import State

app = typer.Typer(
    help="Chronos: a durable queue for time-ordered telemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


class _Options:
    db: str | None = None
    debug: bool = False
    synchronous: str = "FULL"


options = _Options()


@app.callback()
def _global(
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="CHRONOS_DB", help="Database URL or SQLite file path."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    sync: Annotated[
        str,
        typer.Option(
            "--sync",
            help="SQLite durability: FULL (default) or NORMAL (faster, may lose the last "
            "commits on power loss).",
        ),
    ] = "FULL",
) -> None:
    """Chronos: a durable queue for time-ordered telemetry."""
    options.db = db
    options.debug = debug
    options.synchronous = sync.upper()
    if options.synchronous == "NORMAL":
        err.print(
            "warning: --sync NORMAL: events accepted in the last moments before a power loss "
            "or OS crash may be lost (a process crash loses nothing)"
        )


def _fail(message: str, code: int) -> None:
    # One line, whatever the driver put in its message.
    line = " / ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(f"error: {line}", markup=False)
    raise typer.Exit(code)


@contextmanager
def _boundary() -> Iterator[None]:
    """Turn every Chronos error into one line on stderr and the documented exit code."""
    try:
        yield
    except ChronosError as exc:
        if options.debug:
            raise
        _fail(str(exc), exc.exit_code)
    except ValueError as exc:
        if options.debug:
            raise
        _fail(str(exc), 2)


def command(fn: F) -> F:
    """Register `fn` as a command running inside the error boundary."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _boundary():
            return fn(*args, **kwargs)

    app.command()(wrapper)
    return fn


def _chronos() -> Chronos:
    return Chronos(options.db, synchronous=options.synchronous)


def _print_json(data: Any, *, raw: dict[str, str | None] | None = None) -> None:
    """Print JSON on stdout; `raw` fields are spliced in as stored, never re-encoded."""
    data = dict(data)
    spliced = {}
    for field, text in (raw or {}).items():
        if text is None:
            continue
        marker = f"chronos-raw-{uuid.uuid4().hex}"
        data[field] = marker
        spliced[json.dumps(marker)] = text
    rendered = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    for marker, text in spliced.items():
        rendered = rendered.replace(marker, text, 1)
    sys.stdout.write(rendered + "\n")


@command
def migrate() -> None:
    """Create or upgrade the database schema; safe to repeat.

    Example: chronos --db events.db migrate
    """
    with _chronos() as chronos:
        revision = chronos.migrate()
        out.print(f"{chronos.describe()} is at schema revision {revision}")


@contextmanager
def _progress(path: str) -> Iterator[Callable[[int, int], None] | None]:
    if not err.is_terminal or path == "-":
        yield None
        return
    plain = not path.endswith(".gz") and os.path.exists(path)
    total = os.path.getsize(path) if plain else None
    with Progress(
        TextColumn("ingesting"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[lines]:,} lines"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("ingest", total=total, lines=0)
        yield lambda done, lines: bar.update(task, completed=done, lines=lines)


@command
def ingest(
    file: Annotated[str, typer.Argument(help="JSON Lines file, FILE.gz, or - for stdin.")],
    source: Annotated[
        str | None, typer.Option(help="Source for lines without one (default: the file name).")
    ] = None,
    rejects: Annotated[
        str | None, typer.Option(help="Write every rejected line here as JSON Lines.")
    ] = None,
    max_event_bytes: Annotated[
        int, typer.Option(help="Reject lines larger than this many bytes.")
    ] = DEFAULT_MAX_EVENT_BYTES,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Accept events from a JSON Lines file; exit 1 if any line was rejected.

    Example: chronos ingest telemetry.jsonl --rejects rejected.jsonl
    """
    with _chronos() as chronos, _progress(file) as progress:
        report = chronos.ingest(
            file,
            source=source,
            max_event_bytes=max_event_bytes,
            rejects=rejects,
            progress=progress,
        )
    render.rejections(err, report)
    if as_json:
        _print_json(report.as_dict())
    else:
        render.ingest(out, report)
    if report.rejected:
        raise typer.Exit(1)


@command
def worker(
    handler: Annotated[
        str, typer.Option(help="The handler, as module:function.")
    ] = DEFAULT_HANDLER,
    batch: Annotated[
        int, typer.Option(help="Most events claimed at once (about 1 s of work is claimed).")
    ] = DEFAULT_BATCH,
    lease: Annotated[
        float, typer.Option(help="Seconds a claim is held without a heartbeat.")
    ] = 30.0,
    max_attempts: Annotated[
        int, typer.Option(help="Attempts before an event fails for good.")
    ] = DEFAULT_MAX_ATTEMPTS,
    backoff: Annotated[
        float, typer.Option(help="Seconds before the first retry; doubles each time.")
    ] = 1.0,
    drain: Annotated[
        bool, typer.Option("--drain", help="Exit 0 once every event is terminal.")
    ] = False,
    max_events: Annotated[
        int | None, typer.Option(help="Stop after claiming this many events.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="This worker's name in leases and history (default host:pid)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log failures only.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Claim and process events until stopped (SIGINT/SIGTERM stop gracefully).

    Example: chronos worker --handler myapp.handlers:handle --drain
    """
    _configure_logging(quiet)
    with _chronos() as chronos:
        try:
            report = chronos.worker(
                handler,
                name=name,
                batch=batch,
                lease=lease,
                max_attempts=max_attempts,
                backoff=backoff,
            ).run(drain=drain, max_events=max_events)
        except KeyboardInterrupt:
            err.print("stopped at once; held events return when their leases expire")
            raise typer.Exit(130) from None
    if as_json:
        _print_json(report.as_dict())
    else:
        render.worker(out, report)


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    logger = logging.getLogger("chronos")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


DEMO_DB = "chronos-demo.db"
MAX_ID = 2**63 - 1  # ids are 64-bit in both databases


@command
def demo(
    workers: Annotated[int, typer.Option(help="Worker processes to run.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run the whole pipeline on a fresh demo database and show the outcome.

    Example: chronos demo
    """
    path = options.db
    if path is None:
        path = DEMO_DB
        for suffix in ("", "-wal", "-shm"):  # the demo's own file: start afresh
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    with _boundary(), Chronos(path, synchronous=options.synchronous) as chronos:
        outcome = chronos.demo(workers=workers)
    if as_json:
        _print_json(outcome)
        return
    render.demo(out, outcome, db_flag=path)


@command
def inspect(
    event_id: Annotated[int, typer.Argument(help="The event's id.", min=1, max=MAX_ID)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one event: state, attempts, payload, result and its whole history.

    Example: chronos inspect 42 --json
    """
    with _chronos() as chronos:
        detail = chronos.inspect(event_id)
    if as_json:
        raw = {"payload": detail.pop("payload_json"), "result": detail.pop("result_json")}
        _print_json(detail, raw=raw)
    else:
        render.event(out, detail)


@command
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show counts by state, the backlog, the oldest waiting event and throughput.

    Example: chronos stats --json
    """
    with _chronos() as chronos:
        data = chronos.stats()
    if as_json:
        _print_json(data)
    else:
        render.stats(out, data)


@command
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Audit integrity (read-only, safe beside workers); exit 1 on any violation.

    Example: chronos check --json
    """
    with _chronos() as chronos:
        report = chronos.check()
    if as_json:
        _print_json(report.as_dict())
    else:
        render.check(out, report.as_dict())
    if not report.ok:
        raise typer.Exit(1)


@command
def replay(
    event_ids: Annotated[
        list[int] | None,
        typer.Argument(help="Events to replay (default: all matching).", min=1, max=MAX_ID),
    ] = None,
    state: Annotated[
        State, typer.Option(help="Terminal state to select by filters.")
    ] = State.FAILED_TERMINAL,
    source: Annotated[str | None, typer.Option(help="Only events from this source.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only events that ended since: RFC 3339 or 12h, 7d.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replay events that were replayed before.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-ingest terminal events as new events linked to the original (dead-letter redrive).

    Example: chronos replay 42 43   or   chronos replay --source pump-7 --since 1d
    """
    with _chronos() as chronos:
        report = chronos.replay(
            event_ids or (), state=state, source=source, since=since, force=force
        )
    if as_json:
        _print_json(report.as_dict())
    else:
        render.replay(out, err, report)
    if report.skipped and event_ids:  # an event named by id could not be replayed
        raise typer.Exit(1)


@command
def purge(
    older_than: Annotated[
        str, typer.Option(help="Remove terminal events last changed longer ago: 30d, 12h.")
    ],
    state: Annotated[
        list[State] | None, typer.Option(help="Only this terminal state (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be removed.")
    ] = False,
    vacuum: Annotated[
        bool, typer.Option("--vacuum", help="Give the freed space back afterwards.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove old terminal events with their history and storage rows (retention).

    Example: chronos purge --older-than 30d --dry-run
    """
    with _chronos() as chronos:
        report = chronos.purge(
            older_than,
            states=tuple(state) if state else (State.PROCESSED, State.FAILED_TERMINAL),
            dry_run=dry_run,
            vacuum=vacuum,
        )
    if as_json:
        _print_json(report.__dict__)
        return
    render.purge(out, report)


@command
def bench(
    kind: Annotated[str, typer.Argument(help="What to measure: ingest or drain.")],
    events: Annotated[
        int | None,
        typer.Option(help="Events per run (default 1,000,000 for ingest, 100,000 for drain)."),
    ] = None,
    repeat: Annotated[int, typer.Option(help="Runs of each measurement; medians are shown.")] = 3,
    workers: Annotated[str, typer.Option(help="drain: worker counts to compare.")] = "1,2,4",
    handler: Annotated[str, typer.Option(help="drain: noop, sleep1ms or both.")] = "both",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Measure throughput and memory against baselines run alongside, on temporary databases.

    Example: chronos bench drain --events 50000 --workers 1,2,4 --handler noop
    """
    with _chronos() as chronos:
        result = chronos.bench(
            kind,
            events=events,
            repeat=repeat,
            workers=workers,
            handler=handler,
            progress=lambda line: err.print(line, markup=False),
        )
    if as_json:
        _print_json(result)
    else:
        for table in bench_tables(result):
            out.print(table)
    if not result["ok"]:
        raise typer.Exit(1)


def main() -> None:
    """Run the command line."""
    app(prog_name="chronos")


if __name__ == "__main__":  # pragma: no cover
    main()
