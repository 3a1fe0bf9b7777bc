"""Running the simulator: on its own event loop in a daemon thread, or in the foreground."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from batchrun.core.tokens import counter_for

from .config import SimConfig
from .holds import Holds
from .ledger import BatchLedger
from .records import RequestLog, RequestRecord
from .server import build_app

# How long stopping waits for requests still being answered before cancelling them.
SHUTDOWN_TIMEOUT_S = 0.25
# How long start_in_thread waits for the server to listen, and stop() for it to end.
STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
# A model whose tokenizer (o200k_base, the gpt-4o family's) is built before listening: built
# on the first request instead, it held the server's loop for half a second, so requests
# that came meanwhile were read, logged and answered late and all at once. Other encodings
# are built when a request first names one of their models.
WARM_MODEL = "gpt-4o-mini"


def base_url_for(host: str, port: int) -> str:
    """The OpenAI-style base URL of a simulator listening on host:port."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


async def _serve(
    config: SimConfig,
    log: RequestLog | None,
    ledger: BatchLedger | None,
    holds: Holds | None,
    host: str,
    port: int,
    on_listening: Callable[[int], None],
    stop: asyncio.Event,
) -> None:
    """Serves until `stop` is set; calls `on_listening` with the bound port once listening."""
    counter_for(WARM_MODEL)
    runner = web.AppRunner(
        build_app(config, log, ledger=ledger, holds=holds),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        on_listening(runner.addresses[0][1])
        await stop.wait()
    finally:
        await runner.cleanup()


class SimServer:
    """A simulator answering on loopback from a daemon thread; a context manager."""

    def __init__(self, config: SimConfig, host: str, port: int, record: bool = True) -> None:
        self.config = config
        self.host = host
        # The port asked for until the server listens, then the port it listens on.
        self.port = port
        # Every chat request received, unless recording was turned off.
        self._log = RequestLog() if record else None
        # Every file uploaded, batch created and cancel asked for, unless recording was
        # turned off; None then.
        self.batch_ledger = BatchLedger() if record else None
        # The points of the Files and Batches API a test has armed (`hold`).
        self._holds = Holds()
        # The server's loop and its stop signal, set once the thread runs.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        # Resolves to the bound port once listening, or to the error that prevented it.
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="batchrun-sim", daemon=True)
        self._stopped = False

    @property
    def base_url(self) -> str:
        return base_url_for(self.host, self.port)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every chat request received so far, in arrival order."""
        return self._log.snapshot() if self._log is not None else []

    def start(self) -> None:
        """Starts the server thread and returns once it listens (or raises why it cannot)."""
        self._thread.start()
        self.port = self._ready.result(timeout=STARTUP_TIMEOUT_S)

    def stop(self) -> None:
        """Stops serving and waits for the thread to end; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        if not self._thread.is_alive():
            return
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def hold(self, point: str, after: int = 0) -> threading.Event:
        """Make the Files and Batches API wait at `point` on its pass `after` from now (see
        `batchrun.sim.holds`), until `release`; the event is set when it is reached."""
        return self._holds.hold(point, after)

    def release(self) -> None:
        """Let go of whatever waits at a hold point, and disarm the others."""
        self._holds.release()

    def __enter__(self) -> SimServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimServer({self.base_url!r}, {self.config!r})"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await _serve(
                self.config,
                self._log,
                self.batch_ledger,
                self._holds,
                self.host,
                self.port,
                self._ready.set_result,
                self._stop_event,
            )
        except BaseException as exc:
            if self._ready.done():
                raise
            self._ready.set_exception(exc)


def start_in_thread(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0, *, record: bool = True
) -> SimServer:
    """Starts a simulator in a daemon thread and returns it once it is listening.

    `record=False` keeps no request log and no batch ledger, for long benchmark runs.
    """
    server = SimServer(config or SimConfig(), host, port, record=record)
    server.start()
    return server


def serve_forever(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serves in the foreground until SIGINT or SIGTERM, announcing the URL on stdout."""
    asyncio.run(_serve_until_signalled(config, host, port))


async def _serve_until_signalled(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce(bound: int) -> None:
        print(f"batchrun sim listening on {base_url_for(host, bound)}", flush=True)

    try:
        await _serve(config, None, None, None, host, port, announce, stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
