"""`trtkv bench`: a serving load benchmark, against a running server or the engine in-process.

Module map (each owns one thing):

- ``config``: `BenchConfig`, the ``trtkv bench`` options (frozen dataclass, validated).
- ``workload``: `RequestSpec` (prompt ids + output length) and the Poisson arrival gaps, all
  deterministic by seed; no tokenizer is needed.
- ``clients``: the client contract: `BaseClient`, `TargetInfo`, `RequestRecord` (what one
  request measured), and `create_client`.
- ``http_client``: `HttpClient`, OpenAI ``/v1/completions`` streamed over SSE (aiohttp).
- ``engine_client``: `EngineClient`, an `AsyncEngine` in this process.
- ``runner``: `run_benchmark`: arrivals, the concurrency cap, the progress bar.
- ``report``: records -> summary (throughput, TTFT / TPOT / ITL / e2e percentiles), the
  table and the JSON document.
- ``plot``: the PNG (latency CDFs, throughput over time).
- ``cli``: the ``trtkv bench`` subcommand.

Only ``http_client`` imports aiohttp, only ``engine_client`` the runtime, only ``plot``
matplotlib (lazily, Agg backend; aiohttp and matplotlib are the ``bench`` extra).
"""
