"""The embedded simulator: an OpenAI-compatible chat-completions server on loopback.

It answers deterministically (the same body, ignoring `stream`, gets the same id, content and
usage), labels sentiment like a labeler would, honours `n`, `tools`, `response_format`,
`max_tokens` and streaming, and on request misbehaves like the seed gateways: their error
bodies, 429s with Retry-After, quota windows, bad keys, dropped or cut connections, latency.

    with start_in_thread(SimConfig(dialect="bcwhkj")) as sim:
        ...  # point a client at sim.base_url; inspect sim.requests afterwards

Modules, in the order a request meets them: `server` (aiohttp handlers), `limits` and
`faults` (refusals and misbehaviour), `request` (checking the body), `answers` with
`sentiment`, `schema` and `text` (the completion), `stream` (SSE), `records` (the log);
`config` holds SimConfig, `running` the thread and foreground runners, `cli` the options.

The Files and Batches API (/v1/files, /v1/batches) has its own: `batch_api` (handlers),
`batch_files` (uploads checked line by line, kept on disk), `batches` (each batch's moves
and the task answering its lines), `batch_lines` (a line's answer, as chat would give it)
and `ledger` (what was uploaded, batched and cancelled: `SimServer.batch_ledger`); `holds`
lets a test stop the API at a step (`SimServer.hold`), to kill its client there.
"""

from .cli import add_sim_arguments, config_from_args
from .config import FAULT_KINDS, SimConfig
from .records import RequestRecord
from .running import SimServer, serve_forever, start_in_thread

__all__ = [
    "FAULT_KINDS",
    "RequestRecord",
    "SimConfig",
    "SimServer",
    "add_sim_arguments",
    "config_from_args",
    "serve_forever",
    "start_in_thread",
]
