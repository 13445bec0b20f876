"""A private asyncio event loop in a daemon thread, for the synchronous client (``sync_client``).

Any thread may hand it a coroutine (``run``) or an async iterator (``iterate``) and block until
the answer: a plain thread, several threads at once, or the thread of an application's own
running loop (that loop is never touched; this one is another thread's). What the coroutine
raises is raised to the caller unchanged. ``stop`` cancels what is still running, so no caller
is left blocked on a loop that is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar, cast

from submitter.errors import JobqError

T = TypeVar("T")
_END = object()


class ClientClosed(JobqError):
    """The synchronous client was closed before or while a call ran."""


class LoopThread:
    def __init__(self, *, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it. Interrupting the wait (Ctrl-C) cancels it."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError(
                "a synchronous jobq client was called from its own loop (from a callback "
                "such as wait(on_update=...)); call the async JobqClient there"
            )
        with self._lock:
            if self._stopped:
                coro.close()
                raise ClientClosed("the client is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientClosed("the client was closed while the call ran") from None
        except BaseException:
            future.cancel()
            raise

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """Each item of ``items`` (an async iterator run on the loop) as it comes."""

        async def step() -> object:
            try:
                return await anext(items)
            except StopAsyncIteration:
                return _END

        finished = False
        try:
            while True:
                item = self.run(step())
                if item is _END:
                    finished = True
                    return
                yield cast(T, item)
        finally:
            close = getattr(items, "aclose", None)
            if not finished and close is not None:
                with contextlib.suppress(ClientClosed, RuntimeError):
                    self.run(close())

    def stop(self, last: Coroutine[Any, Any, None] | None = None) -> None:
        """Refuse new calls, run ``last`` (a client's goodbye: drain its connection), cancel what
        still runs, stop the loop and wait for its thread. Idempotent."""
        if self.in_loop_thread:
            if last is not None:
                last.close()
            raise RuntimeError("a synchronous jobq client cannot be closed from its own loop")
        with self._lock:
            stopped, self._stopped = self._stopped, True
        if stopped:
            if last is not None:
                last.close()
            return

        async def finish() -> None:
            if last is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(last, 10)
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(finish(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
