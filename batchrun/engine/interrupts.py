"""How Ctrl-C and SIGTERM reach a run, wherever it runs.

A run hears interrupts through a `RouteInterrupts`: given the run's handler, it routes them
to it for as long as the block lasts. The default (`signals`) installs the loop's signal
handlers (main thread only). Sync code that cannot install them, because a loop already
runs in its thread (Jupyter, or sync code called from a coroutine), runs the coroutine on a
fresh loop in a worker thread (`block_on`) and relays the KeyboardInterrupt its waiting
thread gets (`InterruptRelay`), as the signal would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

RouteInterrupts = Callable[[Callable[[], None]], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def signals(handler: Callable[[], None]) -> Iterator[None]:
    """Route Ctrl-C and SIGTERM to `handler` for the whole run, output writing included."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handler)
        except (RuntimeError, ValueError, NotImplementedError):
            continue  # not the main thread: the caller handles interrupts
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def block_on(start: Callable[[RouteInterrupts | None], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from sync code, whether or not a loop runs in this thread.
    `start` makes the coroutine given how it hears interrupts (None: signal handlers)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(start(None))  # the run hears Ctrl-C through signal handlers
    relay = InterruptRelay()
    with ThreadPoolExecutor(1, thread_name_prefix="batchrun-api") as pool:
        future = pool.submit(asyncio.run, start(relay.route))
        while True:
            try:
                return future.result()
            except KeyboardInterrupt:
                if future.done():
                    raise
                relay.interrupt()  # the run stops as on Ctrl-C, keeps its rows, and raises


class InterruptRelay:
    """Carries a Ctrl-C from the waiting thread to a run on a loop in a worker thread.

    The signal only reaches the main thread, as a KeyboardInterrupt where it waits; no
    handler can be installed on the worker's loop. An interrupt before the run is ready to
    hear it is held, and handed over as soon as it is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards both fields below
        # The run's loop and interrupt handler while it listens; None before and after.
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self._held = 0  # interrupts that came before the run listened

    @contextlib.contextmanager
    def route(self, handler: Callable[[], None]) -> Iterator[None]:
        """Hand interrupts to `handler`, on the running loop, while the block lasts."""
        with self._lock:
            self._target = (asyncio.get_running_loop(), handler)
            held, self._held = self._held, 0
        for _ in range(held):
            handler()
        try:
            yield
        finally:
            with self._lock:
                self._target = None

    def interrupt(self) -> None:
        """One Ctrl-C, from any thread."""
        with self._lock:
            if self._target is None:
                self._held += 1
                return
            loop, handler = self._target
        loop.call_soon_threadsafe(handler)
