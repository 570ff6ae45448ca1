"""`run_benchmark`: send the workload at its arrival times, under the concurrency cap.

Owns the benchmark clock and the progress bar; what a request measures is the client's
business, what the measurements mean is `report`'s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from trtkv.bench.clients import BaseClient, RequestRecord, TargetInfo
from trtkv.bench.config import BenchConfig
from trtkv.bench.workload import RequestSpec, arrival_times, create_workload
from trtkv.progress import Counter


@dataclass(frozen=True)
class BenchRun:
    """The raw outcome of one benchmark.

    Attributes:
        config: the options it ran with.
        target: what it ran against.
        records: one per request, in workload order.
        duration_s: from the first send to the last response.
    """

    config: BenchConfig
    target: TargetInfo
    records: tuple[RequestRecord, ...]
    duration_s: float


async def run_benchmark(config: BenchConfig, client: BaseClient) -> BenchRun:
    """Open ``client``, send the workload of ``config``, close the client.

    Raises:
        TrtkvError: the target cannot be opened, or the workload does not fit it.
    """
    try:
        target = await client.open()
        vocab_size = config.vocab_size or target.vocab_size or 256
        specs = create_workload(config, vocab_size, target.max_model_len)
        records, duration = await _send_all(config, client, specs)
    finally:
        await client.close()
    return BenchRun(config, target, tuple(records), duration)


async def _send_all(config: BenchConfig, client: BaseClient,
                    specs: list[RequestSpec]) -> tuple[list[RequestRecord], float]:
    times = arrival_times(len(specs), config.request_rate, config.seed)
    limit = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    records = [RequestRecord.for_spec(s) for s in specs]
    bar = Counter(len(specs), "trtkv bench", enabled=config.progress)
    num_not_ok = 0
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    async def one(spec: RequestSpec, record: RequestRecord) -> None:
        nonlocal num_not_ok
        if limit is None:
            await client.send(spec, record, clock)
        else:
            async with limit:
                await client.send(spec, record, clock)
        if not record.is_ok:
            num_not_ok += 1
        bar.advance(f"{num_not_ok} rejected or failed" if num_not_ok else None)

    tasks = []
    try:
        for spec, record, at in zip(specs, records, times, strict=True):
            delay = at - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(spec, record)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    end = max((r.end_s for r in records), default=clock())
    return records, end
