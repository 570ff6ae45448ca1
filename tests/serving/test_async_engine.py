"""AsyncEngine over a real (tiny, random-weight) exported model on ONNX Runtime."""

from __future__ import annotations

import asyncio

import pytest

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime.async_engine import AsyncEngine, EngineClosedError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams

PROMPT = [5, 17, 42, 9, 100, 3]


@pytest.fixture
def engine(exported_factory) -> Engine:
    return Engine(exported_factory("llama"),
                  EngineConfig(num_blocks=32, num_threads=1, max_num_queued_requests=4))


def _used(engine: Engine) -> int:
    return engine.stats()["scheduler"]["kv"]["num_used"]


def test_streamed_deltas_concatenate_to_the_final_output(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
    engine.add_request(PROMPT, params)
    expected: tuple[int, ...] = ()
    while engine.has_unfinished():
        for out in engine.step():
            expected = out.outputs[0].token_ids

    async def main() -> tuple[list[int], int, bool]:
        aengine = AsyncEngine(engine)
        ids: list[int] = []
        num_chunks, last_finished = 0, False
        async for out in aengine.generate(PROMPT, params):
            ids.extend(out.outputs[0].new_token_ids)
            assert tuple(ids) == out.outputs[0].token_ids
            num_chunks += 1
            last_finished = out.finished
        await aengine.shutdown()
        return ids, num_chunks, last_finished

    ids, num_chunks, last_finished = asyncio.run(main())
    assert tuple(ids) == expected
    assert num_chunks == 12 and last_finished
    assert _used(engine) == 0


def test_concurrent_requests_and_early_stop_free_blocks(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=40, temperature=0.0, ignore_eos=True)

    async def consume(aengine: AsyncEngine, stop_after: int | None) -> str | None:
        agen = aengine.generate(PROMPT, params)
        n = 0
        async for out in agen:
            n += 1
            if stop_after is not None and n >= stop_after:
                await agen.aclose()  # a client going away
                return None
            if out.finished:
                return out.outputs[0].finish_reason
        return "ended"

    async def main() -> list[str | None]:
        aengine = AsyncEngine(engine)
        results = await asyncio.gather(*(consume(aengine, 3 if i % 2 else None) for i in range(4)))
        await asyncio.sleep(0.05)
        assert aengine.num_streams == 0
        await aengine.call(lambda e: None)
        await aengine.shutdown()
        return list(results)

    results = asyncio.run(main())
    assert results == ["length", None, "length", None]
    assert not engine.has_unfinished() and _used(engine) == 0
    engine.scheduler.check_integrity()


def test_abort_ends_the_stream_and_frees_blocks(engine: Engine) -> None:
    async def main() -> str | None:
        aengine = AsyncEngine(engine)
        stream = await aengine.add_request(PROMPT, SamplingParams(max_new_tokens=200, ignore_eos=True),
                                           request_id="r1")
        await stream.__anext__()
        aengine.abort("r1")
        last = None
        async for out in stream:
            last = out
        await aengine.shutdown()
        return last.outputs[0].finish_reason if last else None

    assert asyncio.run(main()) == "abort"
    assert _used(engine) == 0


def test_add_errors_propagate_and_cancellation_aborts(engine: Engine) -> None:
    async def main() -> None:
        aengine = AsyncEngine(engine)
        with pytest.raises(InvalidRequestError):
            await aengine.add_request([], SamplingParams())
        with pytest.raises(RequestRejectedError) as info:
            await aengine.add_request(PROMPT, SamplingParams(max_new_tokens=10_000))
        assert info.value.reason == "too_long"
        # A consumer task cancelled mid-stream (a client disconnect) aborts its request.
        started = asyncio.Event()

        async def consumer() -> None:
            async for _ in aengine.generate(PROMPT, SamplingParams(max_new_tokens=200, ignore_eos=True)):
                started.set()

        task = asyncio.create_task(consumer())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if not await aengine.call(lambda e: e.has_unfinished()):
                break
            await asyncio.sleep(0.01)
        assert await aengine.call(_used) == 0
        await aengine.shutdown()
        with pytest.raises(EngineClosedError):
            await aengine.add_request(PROMPT, SamplingParams())

    asyncio.run(main())


def test_shutdown_drains_or_aborts(engine: Engine) -> None:
    async def main() -> list[str | None]:
        aengine = AsyncEngine(engine)
        short = await aengine.add_request(PROMPT, SamplingParams(max_new_tokens=2, ignore_eos=True))
        # As long as the pool allows (32 blocks of 16): hundreds of steps, far past the drain.
        room = min(engine.scheduler.config.max_model_len, 32 * 16) - len(PROMPT)
        long = await aengine.add_request(PROMPT, SamplingParams(max_new_tokens=room, ignore_eos=True))

        async def last(stream) -> str | None:
            reason = None
            async for out in stream:
                reason = out.outputs[0].finish_reason
            return reason

        tasks = [asyncio.create_task(last(s)) for s in (short, long)]
        await aengine.shutdown(drain_timeout=0.2)
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == ["length", "abort"]
    assert not engine.has_unfinished() and _used(engine) == 0


def test_shutdown_delivers_every_abort_before_stopping(engine: Engine) -> None:
    """A short drain aborts in-flight requests: every stream still gets its final output
    (finish_reason "abort") — the driver must not be cancelled before it delivers them."""

    async def main() -> list[list[str | None]]:
        results = []
        for _ in range(10):
            aengine = AsyncEngine(engine)
            streams = [await aengine.add_request(PROMPT, SamplingParams(max_new_tokens=40, ignore_eos=True))
                       for _ in range(6)]

            async def last(stream) -> str | None:
                reason = None
                async for out in stream:
                    reason = out.outputs[0].finish_reason
                return reason

            tasks = [asyncio.create_task(last(s)) for s in streams]
            await asyncio.sleep(0.02)
            await aengine.shutdown(drain_timeout=0.0)
            results.append(list(await asyncio.wait_for(asyncio.gather(*tasks), 5.0)))
        return results

    for reasons in asyncio.run(main()):
        assert all(r in ("abort", "length") for r in reasons), reasons
    assert not engine.has_unfinished() and _used(engine) == 0

