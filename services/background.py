"""An asyncio event loop on a thread of its own, for synchronous code that drives async
clients and engines over many calls (a training job's reward client, an in-process engine):
one loop, and whatever it holds open (connection pools, engine state), for the whole job
rather than a new `asyncio.run` per call. A coroutine run there carries the caller's request id
(its logs, and the calls it makes, name the request or job that caused them)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from services.observability import current_request_id, set_request_id

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (its exception is raised)."""
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coroutine`` on the loop; the caller goes on and takes its result later."""
        request_id = current_request_id()

        async def with_request_id() -> T:
            set_request_id(request_id)  # in this call's own task on the loop
            return await coroutine

        return asyncio.run_coroutine_threadsafe(with_request_id(), self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
