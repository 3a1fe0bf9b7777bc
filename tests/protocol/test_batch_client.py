"""The Files and Batches API client against the simulator's, over real loopback HTTP: every
call, paging, retries of 5xx and of a file not found yet, a bad key, an unknown status."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batchrun.core.secrets import Secret
from batchrun.errors import BadKey, BatchApiFailed
from batchrun.protocol.batches import BatchClient, BatchInfo, BatchState
from batchrun.sim import SimConfig, SimServer, start_in_thread

KEY = "sk-sim-batch-client-0123456789abcdef"
T = TypeVar("T")


def request_lines(n: int, prefix: str = "row") -> bytes:
    """n batch request lines, as export-batch writes them."""
    lines = []
    for i in range(n):
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": f"Review {i}: I love it, works great."}],
        }
        line = {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with start_in_thread(SimConfig(api_key=KEY, batch_delay_s=0.05)) as server:
        yield server


class FakeTime:
    """A clock that only the client's sleeps move, and the sleeps it was asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client(sim: SimServer, **options: Any) -> BatchClient:
    key = options.pop("key", KEY)
    return BatchClient(
        sim.base_url, Secret(key), name="openai-batch", key_env="BATCH_KEY", **options
    )


def run(use: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(use())


async def ended(api: BatchClient, batch_id: str) -> BatchInfo:
    """The batch once it has ended (the simulator's take a few tens of milliseconds)."""
    for _ in range(500):
        batch = await api.get_batch(batch_id)
        if batch.state.ended:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end")


def test_upload_create_poll_download_and_delete(sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(5))
    out = tmp_path / "out.jsonl"

    async def use() -> None:
        async with client(sim) as api:
            stored = await api.upload(source, "batchrun-key1.jsonl")
            assert (stored.filename, stored.bytes) == ("batchrun-key1.jsonl", source.stat().st_size)
            assert stored.id.startswith("file-") and stored.created_at is not None
            assert await api.find_file("batchrun-key1.jsonl") == stored
            assert await api.find_file("batchrun-other.jsonl") is None

            created = await api.create_batch(stored.id, "24h", {"batchrun_key": "key1"})
            assert created.state is BatchState.WAITING and created.status == "validating"
            assert created.input_file_id == stored.id
            assert created.metadata == {"batchrun_key": "key1"}
            assert await api.find_batch("batchrun_key", "key1") == created
            assert await api.find_batch("batchrun_key", "key2") is None

            batch = await ended(api, created.id)
            assert batch.state is BatchState.COMPLETED and batch.status == "completed"
            assert (batch.request_counts.total, batch.request_counts.completed) == (5, 5)
            assert batch.completed_at is not None and batch.created_at is not None
            assert batch.output_file_id is not None and batch.error_codes == ()

            written = await api.download(batch.output_file_id, out)
            assert written == out.stat().st_size
            answers = [json.loads(line) for line in out.read_bytes().splitlines()]
            assert sorted(a["custom_id"] for a in answers) == [f"row-{i}" for i in range(5)]
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

            again = await api.cancel_batch(created.id)  # ended: nothing to cancel
            assert again.state is BatchState.COMPLETED

            await api.delete_file(stored.id)
            await api.delete_file(stored.id)  # already gone: no error
            assert await api.find_file("batchrun-key1.jsonl") is None

    run(use)
    assert sim.batch_ledger is not None and len(sim.batch_ledger.uploads) == 1


def test_listings_are_read_page_by_page(sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(1))

    async def use() -> None:
        async with client(sim, page_size=2) as api:
            files = [await api.upload(source, f"part-{i}.jsonl") for i in range(5)]
            # newest first: the oldest is on the third page
            assert await api.find_file("part-0.jsonl") == files[0]
            for i, stored in enumerate(files[:3]):
                await api.create_batch(stored.id, "24h", {"n": str(i)})
            oldest = await api.find_batch("n", "0")
            assert oldest is not None and oldest.input_file_id == files[0].id

    run(use)


def test_polls_answered_with_a_5xx_are_retried(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(2))
    fake = FakeTime()
    config = SimConfig(api_key=KEY, batch_delay_s=0.05, batch_poll_errors=0.5)
    with start_in_thread(config) as server:

        async def use() -> list[BatchInfo]:
            async with client(server, clock=fake.clock, sleep=fake.sleep) as api:
                stored = await api.upload(source, "polled.jsonl")
                created = await api.create_batch(stored.id, "24h", {})
                return [await api.get_batch(created.id) for _ in range(20)]

        polls = run(use)
    assert all(p.id == polls[0].id for p in polls)
    assert fake.sleeps, "a half of the polls fail: some were retried"
    assert all(0 <= s <= 30 for s in fake.sleeps)


def test_a_batch_api_that_stays_down_fails_after_max_retry_s(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(1))
    fake = FakeTime()
    config = SimConfig(api_key=KEY, batch_delay_s=0.05, batch_poll_errors=1.0)
    with start_in_thread(config) as server:

        async def use() -> None:
            options = {"clock": fake.clock, "sleep": fake.sleep, "max_retry_s": 120}
            async with client(server, **options) as api:
                stored = await api.upload(source, "down.jsonl")
                created = await api.create_batch(stored.id, "24h", {})
                await api.get_batch(created.id)

        with pytest.raises(BatchApiFailed) as caught:
            run(use)
    message = str(caught.value)
    assert message.startswith("The batch endpoint 'openai-batch' could not look at batch batch_")
    assert "for 120 s (HTTP 5" in message and caught.value.exit_code == 3
    assert sum(fake.sleeps) == pytest.approx(120)


def test_a_file_not_found_just_after_its_upload_is_asked_for_again(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(3))
    config = SimConfig(api_key=KEY, batch_delay_s=0.05, file_visible_after_s=0.5)
    with start_in_thread(config) as server:

        async def use() -> BatchInfo:
            async with client(server) as api:
                stored = await api.upload(source, "late.jsonl")
                created = await api.create_batch(stored.id, "24h", {"k": "v"})
                return await ended(api, created.id)

        started = time.monotonic()
        batch = run(use)
        assert time.monotonic() - started >= 0.5  # the create waited for the file to show
        assert batch.state is BatchState.COMPLETED and batch.request_counts.completed == 3
        assert server.batch_ledger is not None and len(server.batch_ledger.batches) == 1


def test_a_bad_key_is_bad_key_and_never_shown(sim: SimServer, tmp_path: Path) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"

    async def use() -> None:
        async with client(sim, key=wrong) as api:
            await api.find_file("any.jsonl")

    with pytest.raises(BadKey) as caught:
        run(use)
    message = str(caught.value)
    assert message.startswith("The gateway rejected the API key in BATCH_KEY (")
    assert wrong not in message and wrong[:8] not in message
    assert caught.value.exit_code == 3


def test_another_refusal_carries_the_providers_message(sim: SimServer, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(1))

    async def use() -> None:
        async with client(sim) as api:
            stored = await api.upload(source, "window.jsonl")
            await api.create_batch(stored.id, "48h", {})

    with pytest.raises(BatchApiFailed) as caught:
        run(use)
    assert str(caught.value).startswith(
        "The batch endpoint 'openai-batch' refused to create a batch of file-"
    )
    assert "'completion_window' must be '24h'" in str(caught.value)
    assert (caught.value.status, str(caught.value).count("\n")) == (400, 0)
    assert KEY not in str(caught.value)

    async def missing() -> None:
        async with client(sim) as api:
            await api.get_batch("batch_missing")

    with pytest.raises(BatchApiFailed) as caught:
        run(missing)
    assert (caught.value.status, caught.value.code) == (404, "batch_not_found")


def test_an_unknown_status_is_unknown_not_a_crash(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(1))
    config = SimConfig(api_key=KEY, batch_delay_s=30, batch_unknown_status="in_queue")
    with start_in_thread(config) as server:

        async def use() -> BatchInfo:
            async with client(server) as api:
                stored = await api.upload(source, "queued.jsonl")
                created = await api.create_batch(stored.id, "24h", {})
                return await api.get_batch(created.id)

        batch = run(use)
    assert (batch.status, batch.state, batch.state.ended) == ("in_queue", BatchState.UNKNOWN, False)


def test_a_running_batch_is_cancelled(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(2))
    config = SimConfig(api_key=KEY, batch_delay_s=0.2, batch_line_ms=200)
    with start_in_thread(config) as server:

        async def use() -> tuple[BatchInfo, BatchInfo]:
            async with client(server) as api:
                stored = await api.upload(source, "cancel.jsonl")
                created = await api.create_batch(stored.id, "24h", {})
                asked = await api.cancel_batch(created.id)
                return asked, await ended(api, created.id)

        asked, final = run(use)
    assert asked.state is BatchState.CANCELLING and asked.status == "cancelling"
    assert final.state is BatchState.CANCELLED and final.cancelled_at is not None


def test_a_batch_past_the_enqueued_token_limit_fails_with_its_code(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(request_lines(3))
    config = SimConfig(api_key=KEY, batch_delay_s=0.05, batch_enqueued_tokens=10)
    with start_in_thread(config) as server:

        async def use() -> BatchInfo:
            async with client(server) as api:
                stored = await api.upload(source, "big.jsonl")
                created = await api.create_batch(stored.id, "24h", {})
                return await ended(api, created.id)

        batch = run(use)
    assert batch.state is BatchState.FAILED and batch.error_codes == ("token_limit_exceeded",)
