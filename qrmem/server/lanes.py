"""Bounded worker pools ("lanes") that run blocking work (models, the database) off the event loop.

A lane has `workers` threads and room for `queue` more jobs waiting. One job more is refused at
once with `OverloadedError` (HTTP 429 with Retry-After) instead of piling up. Every job has a
deadline (`timeout` seconds from submission): a job still waiting at its deadline never starts and
its caller gets `OverloadedError` too (nothing was done: retrying is safe), while a caller whose job
runs past it gets `RequestTimeoutError` (HTTP 503) and the job runs to its end in its thread (a
write then commits whole or not at all: each session is one transaction). A job
counts against the lane's capacity until its thread is done with it, so slow work throttles intake.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import OverloadedError, RequestTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Expired(Exception):
    """The job waited past its deadline and was not started."""


def _exception(future: Future[Any]) -> BaseException | None:
    return future.exception() if future.done() and not future.cancelled() else None


class Lane:
    def __init__(self, name: str, workers: int, queue: int, timeout: float) -> None:
        if workers < 1 or queue < 0 or not timeout > 0:
            raise ValueError(f"lane {name}: need workers >= 1, queue >= 0, timeout > 0")
        self.name, self.workers, self.queue, self.timeout = name, workers, queue, timeout
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"qrmem-{name}")
        self._lock = threading.Lock()
        self.inflight = 0  # jobs queued or running
        self._seconds: float | None = None  # a job's run time, see observe() (None: no job yet)

    @property
    def capacity(self) -> int:
        return self.workers + self.queue

    def observe(self, seconds: float) -> None:
        """Record how long a job took. The pace rises at once to a slower job and comes down slowly
        (a moving average), so the lane sheds load as soon as work slows down (a busy machine)."""
        if self._seconds is None or seconds > self._seconds:
            self._seconds = seconds
        else:
            self._seconds += 0.2 * (seconds - self._seconds)

    def expected_seconds(self) -> float:
        """How long a job submitted now would take to finish, at the measured pace."""
        return (self._seconds or 0.0) * (self.inflight / self.workers + 1)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the backlog ahead divided among the workers."""
        return max(1, math.ceil((self._seconds or 0.0) * max(self.inflight, 1) / self.workers))

    async def run(self, fn: Callable[..., T], /, *args: Any, timeout: float | None = None) -> T:
        """Run `fn(*args)` in a worker thread; refuse at once when the lane is full."""
        limit = self.timeout if timeout is None else timeout
        with self._lock:
            if self.inflight >= self.capacity:
                raise OverloadedError(
                    f"the server is busy ({self.name} lane full: {self.workers} running, {self.queue} "
                    f"waiting); retry in {self.retry_after()} s", retry_after=self.retry_after())
            if self.inflight and self.expected_seconds() > limit:
                raise OverloadedError(
                    f"the server is busy ({self.name} lane: {self.inflight} jobs ahead, about "
                    f"{self.expected_seconds():.0f} s, longer than the {limit:g} s deadline); retry in "
                    f"{self.retry_after()} s", retry_after=self.retry_after())
            self.inflight += 1
        deadline = time.monotonic() + limit

        def job() -> T:
            if time.monotonic() > deadline:
                raise _Expired
            t0 = time.monotonic()
            try:
                return fn(*args)
            finally:
                self.observe(time.monotonic() - t0)

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # shut down
            self._release(None)
            raise OverloadedError("the server is shutting down; retry on another instance", retry_after=1) from None
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except (TimeoutError, _Expired):
            if future.cancelled() or isinstance(_exception(future), _Expired):  # it never ran: busy
                raise OverloadedError(
                    f"the server is busy: the request waited {limit:g} s for the {self.name} lane and was "
                    f"dropped unprocessed; retry in {self.retry_after()} s", retry_after=self.retry_after()) from None
            raise RequestTimeoutError(
                f"the request took longer than {limit:g} s ({self.name} lane) and finishes on its own: "
                "a write is stored whole or not at all, and resending it is safe",
                retry_after=self.retry_after()) from None

    def _release(self, _future: object) -> None:
        with self._lock:
            self.inflight -= 1

    def shutdown(self) -> None:
        """Wait for the jobs already accepted, then stop the threads."""
        self._executor.shutdown(wait=True)
