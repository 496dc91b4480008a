"""The worker loop: claim a batch, run the handler on each event, record each outcome.

Handlers run at least once; the storage row is written exactly once, in the same
transaction as PROCESSING -> PROCESSED. A heartbeat thread renews the leases of
the batch while a handler runs, so a slow handler is not run twice.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sqlalchemy.engine import Connection, Engine

from chronos import buffer, errors, worker
from chronos.db import translated
from chronos.handlers import Handler, to_json
from chronos.retry import RetryPolicy
from chronos.states import State
from chronos.worker import Claim

log = logging.getLogger("chronos.worker")

MAX_ERROR_CHARS = 4000
DEFAULT_BATCH = 100
BATCH_SECONDS = 1.0
DRAIN_POLL = 0.25


@dataclass
class WorkerReport:
    """What one worker did."""

    name: str
    claimed: int = 0
    processed: int = 0
    retried: int = 0
    failed_terminal: int = 0
    lost_leases: int = 0
    recovered: int = 0
    released: int = 0
    seconds: float = 0.0
    stopped_by_signal: bool = False
    lost: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Outcome:
    claim: Claim
    result: str | None = None
    error: str | None = None
    summary: str | None = None
    terminal: bool = False


def default_name() -> str:
    """host:pid:random; the suffix keeps containers that share a host name and a pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class Worker:
    """Claims and processes events until stopped, drained or `max_events` is reached."""

    def __init__(
        self,
        engine: Engine,
        handler: Handler,
        *,
        name: str | None = None,
        batch: int = DEFAULT_BATCH,
        lease: float = 30.0,
        policy: RetryPolicy | None = None,
        idle_max: float = 2.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        report_every: float = 10.0,
    ) -> None:
        if batch < 1:
            raise ValueError("--batch must be at least 1")
        if not math.isfinite(lease) or lease <= 0:
            raise ValueError("--lease must be a positive number of seconds")
        self.engine = engine
        self.handler = handler
        self.name = name or default_name()
        self.batch = batch
        self.lease = lease
        self.policy = policy or RetryPolicy()
        self.idle_max = idle_max
        self.clock = clock
        self.rng = rng or random.Random()
        self.report_every = report_every
        self.report = WorkerReport(self.name)
        self._stopping = threading.Event()
        self._signals = 0
        self._per_event: float | None = None  # moving average of handler seconds

    # -- one step ---------------------------------------------------------------

    def run_once(self, *, limit: int | None = None) -> int:
        """Recover expired leases, claim one batch and process it; return how many claimed."""
        size = self._claim_size() if limit is None else max(0, min(self._claim_size(), limit))
        with translated(f"worker {self.name} claiming"), self.engine.begin() as conn:
            # Read the clock once the write lock is held: a wait for it must not eat
            # into the lease this claim is about to take.
            now = self.clock()
            recovered = worker.recover_expired(
                conn,
                worker=self.name,
                max_attempts=self.policy.max_attempts,
                retry_at=now,  # the expired lease was the wait: retry at once
                now=now,
            )
            claims = worker.claim(conn, worker=self.name, batch=size, lease=self.lease, now=now)
        for item in recovered:
            self.report.recovered += 1
            log.warning("event=%s recovered state=%s reason=%r", item.id, item.state, item.note)
        if claims:
            self.report.claimed += len(claims)
            self._process(claims)
        return len(claims)

    def _claim_size(self) -> int:
        """About BATCH_SECONDS of work, at most `batch`: fast handlers amortise each
        commit over many events, slow ones do not hoard events other workers could run."""
        if self._per_event is None:
            return self.batch
        return max(1, min(self.batch, int(BATCH_SECONDS / max(self._per_event, 1e-6))))

    def _process(self, claims: list[Claim]) -> None:
        outcomes: list[_Outcome] = []
        held = {c.id for c in claims}
        started = time.monotonic()
        begun: set[int] = set()
        with self._heartbeat(held):
            for item in claims:
                if self._stopping.is_set():
                    break
                begun.add(item.id)
                if item.id in held:
                    outcomes.append(self._call(item))
                else:  # the heartbeat found another worker owns it now: do not run it
                    self._lost({item.id}, "before its handler ran; not run")
        if outcomes:
            per_event = (time.monotonic() - started) / len(outcomes)
            previous = self._per_event if self._per_event is not None else per_event
            self._per_event = 0.7 * previous + 0.3 * per_event
        self._finish(outcomes, [c for c in claims if c.id not in begun and c.id in held])

    def _call(self, item: Claim) -> _Outcome:
        try:
            result = self.handler(item.to_event())
            return _Outcome(item, result=to_json(result))
        except errors.TerminalError as exc:
            return _Outcome(item, error=_describe(exc), summary=_summary(exc), terminal=True)
        except Exception as exc:  # any other failure is data: recorded and retried
            return _Outcome(item, error=_describe(exc), summary=_summary(exc))

    def _finish(self, outcomes: list[_Outcome], unstarted: list[Claim]) -> None:
        """Record a batch's outcomes in one transaction: successes in one statement."""
        now = self.clock()
        results = {o.claim.id: o.result for o in outcomes if o.error is None}
        with translated(f"worker {self.name} recording outcomes"), self.engine.begin() as conn:
            stored = worker.succeed(conn, results, worker=self.name, now=now)
            self.report.processed += len(stored)
            self._lost(set(results) - set(stored), "before its result was stored; nothing was")
            for outcome in outcomes:
                if outcome.error is not None:
                    self._record_failure(conn, outcome, now)
            if unstarted:
                ids = [c.id for c in unstarted]
                released = worker.release(conn, ids, worker=self.name, now=now)
                self.report.released += len(released)
                self._lost(set(ids) - set(released), "before it could be released")
                log.info("released=%d on shutdown", len(released))

    def _lost(self, ids: set[int], when: str) -> None:
        """A guard failed: another worker recovered these events after our lease expired."""
        for event_id in sorted(ids):
            self.report.lost_leases += 1
            self.report.lost.append(event_id)
            log.error("event=%s lease lost %s; another worker owns it now", event_id, when)

    def _record_failure(self, conn: Connection, outcome: _Outcome, now: float) -> None:
        item = outcome.claim
        decision = self.policy.after_failure(
            item.attempts,
            terminal=outcome.terminal,
            error=outcome.summary or "",
            now=now,
            rng=self.rng,
        )
        if not worker.fail(
            conn, item.id, decision, error=outcome.error or "", worker=self.name, now=now
        ):
            self._lost({item.id}, "before its failure was recorded")
            return
        if decision.state is State.FAILED_TERMINAL:
            self.report.failed_terminal += 1
        else:
            self.report.retried += 1
        log.warning(
            "event=%s attempt=%d outcome=%s error=%r",
            item.id,
            item.attempts,
            decision.state,
            decision.reason,
        )

    @contextmanager
    def _heartbeat(self, held: set[int]) -> Iterator[None]:
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease / 3):
                try:
                    with self.engine.begin() as conn:
                        kept = worker.renew(
                            conn, sorted(held), worker=self.name, until=self.clock() + self.lease
                        )
                except Exception as exc:  # the next beat tries again; leases are long
                    log.error("heartbeat failed: %s", exc)
                    continue
                for lost in held - kept:
                    log.error("event=%s lease lost during the handler", lost)
                held.intersection_update(kept)

        thread = threading.Thread(target=beat, name=f"heartbeat-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # -- the loop ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: claim nothing new, finish or release what is held."""
        self._stopping.set()

    def run(self, *, drain: bool = False, max_events: int | None = None) -> WorkerReport:
        """Work until stopped; with `drain`, until every event is terminal."""
        started = time.monotonic()
        restore = self._install_signals()
        try:
            with translated("worker start"), self.engine.begin() as conn:
                buffer.sweep(conn, now=self.clock())
            idle = 0.05
            last_report = time.monotonic()
            while not self._stopping.is_set():
                limit = None if max_events is None else max_events - self.report.claimed
                if limit is not None and limit <= 0:
                    break
                try:
                    claimed = self.run_once(limit=limit)
                except errors.DatabaseBusy as exc:  # passing contention: back off, go on
                    log.warning("database busy, backing off: %s", exc)
                    self._stopping.wait(idle)
                    idle = min(self.idle_max, idle * 2)
                    continue
                if claimed:
                    idle = 0.05
                elif drain:
                    wait = self._drain_wait()
                    if wait is None:
                        break
                    self._stopping.wait(wait)
                else:
                    self._stopping.wait(idle)
                    idle = min(self.idle_max, idle * 2)
                if time.monotonic() - last_report >= self.report_every:
                    last_report = time.monotonic()
                    self._log_throughput(started)
        finally:
            restore()
        self.report.seconds = time.monotonic() - started
        self.report.stopped_by_signal = self._signals > 0
        return self.report

    def _drain_wait(self) -> float | None:
        """None when every event is terminal, else how long to wait for the next one."""
        with self.engine.connect() as conn:
            if worker.unfinished(conn) == 0:
                return None
            wake = worker.next_wakeup(conn)
        if wake is None:  # events being ingested right now: look again soon
            return 0.05
        # Other workers may finish (or release) their events long before their leases
        # expire, so a draining worker looks again often rather than at the expiry.
        return max(0.01, min(DRAIN_POLL, self.idle_max, wake - self.clock() + 0.001))

    def _log_throughput(self, started: float) -> None:
        elapsed = max(1e-9, time.monotonic() - started)
        done = self.report.processed + self.report.failed_terminal
        log.info(
            "processed=%d retried=%d failed_terminal=%d rate=%.1f/s",
            self.report.processed,
            self.report.retried,
            self.report.failed_terminal,
            done / elapsed,
        )

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                raise KeyboardInterrupt  # second signal: stop at once, leases will expire
            log.info("signal=%s stopping: finishing the current event", signum)
            self.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

        return restore


def _storable(text: str) -> str:
    # A handler's message may hold a lone surrogate or a NUL, which no database text
    # (PostgreSQL's at least) can store.
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _summary(exc: BaseException) -> str:
    return _storable(f"{type(exc).__name__}: {exc}"[:500])


def _describe(exc: BaseException) -> str:
    text = _storable("".join(traceback.format_exception(exc)))
    return text if len(text) <= MAX_ERROR_CHARS else "..." + text[-MAX_ERROR_CHARS:]
