"""Where graders run: a bounded pool of their own, shared fairly between projects.

Graders (a python grader waits seconds on its sandbox) ran on asyncio's default thread pool,
which the service's own work shares: API-key lookups, registry reads, `/readyz`. Six slow
python gradings of one project then held every thread, and another project's `string_check`
request, `/readyz` and `/v1/reward_models` waited 11 s behind them. Here gradings get
`threads` threads of their own, one project at most `per_project` of them at once and at most
`queued` more of its requests waiting; past that a request is refused with a 429 and
`Retry-After` rather than queued without end. One project's burst thus neither holds every
thread nor fills a queue that other projects' requests would wait in.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from services.errors import TooManyRequests

T = TypeVar("T")

RETRY_AFTER_S = 1
"""What a refused client is told to wait: a grading takes seconds at most (its wall limit)."""


class GradingPool:
    def __init__(self, threads: int, per_project: int, queued: int) -> None:
        self.threads, self.per_project, self.queued = threads, per_project, queued
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="grader")
        self._projects: dict[str | None, asyncio.Semaphore] = {}
        self._admitted: dict[str | None, int] = {}
        """Per project: its requests running or waiting now."""

    async def run(self, project_id: str | None, function: Callable[..., T], *args: Any,
                  **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on a grading thread, once ``project_id`` has a slot.
        TooManyRequests when the project already has `per_project` + `queued` requests in."""
        admitted = self._admitted.get(project_id, 0)
        if admitted >= self.per_project + self.queued:
            raise TooManyRequests(
                f"this project has {admitted} grading requests running or waiting, its limit; "
                f"retry in {RETRY_AFTER_S} s", retry_after=RETRY_AFTER_S,
                code="grader_queue_full")
        slot = self._projects.setdefault(project_id, asyncio.Semaphore(self.per_project))
        self._admitted[project_id] = admitted + 1
        try:
            async with slot:
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, functools.partial(function, *args, **kwargs))
        finally:
            self._admitted[project_id] -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
