"""`trtkv bench`: registered into the main CLI by `trtkv.cli` (it calls `register`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def register(subparsers: Any) -> None:
    from trtkv.bench.config import BenchConfig
    from trtkv.cli import add_dataclass_options
    from trtkv.runtime.config import EngineConfig

    p = subparsers.add_parser(
        "bench", help="load benchmark: a running server (--url) or the engine in-process "
        "(--model-dir); throughput, TTFT/TPOT/ITL percentiles, JSON + PNG",
        description="Send a synthetic workload (random token-id prompts, EOS ignored) and "
        "report throughput and latency. Engine options apply with --model-dir only.")
    add_dataclass_options(p, BenchConfig)
    engine = p.add_argument_group("engine options (in-process mode, --model-dir)")
    add_dataclass_options(engine, EngineConfig)  # type: ignore[arg-type]
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from trtkv.bench.clients import create_client
    from trtkv.bench.config import BenchConfig
    from trtkv.bench.report import format_table, summarize, to_json, write_json
    from trtkv.bench.runner import run_benchmark
    from trtkv.cli import dataclass_from_args
    from trtkv.errors import ConfigError
    from trtkv.runtime.config import EngineConfig

    config: BenchConfig = dataclass_from_args(BenchConfig, args)
    engine_config: EngineConfig = dataclass_from_args(EngineConfig, args)
    if config.url and engine_config != EngineConfig():
        raise ConfigError("engine options (--num-blocks, --max-num-seqs, ...) apply only with "
                          "--model-dir; with --url, set them on `trtkv serve`")
    if config.output_png:
        from trtkv.bench.plot import import_matplotlib

        import_matplotlib()  # before the run: a missing extra fails now, not after it
    run = asyncio.run(run_benchmark(config, create_client(config, engine_config)))
    summary = summarize(run)
    print(format_table(run, summary))
    if config.output_json:
        write_json(config.output_json, to_json(run, summary, engine_config if config.model_dir else None))
        print(f"wrote {config.output_json}", file=sys.stderr)
    if config.output_png:
        from trtkv.bench.plot import write_png

        write_png(config.output_png, run, summary)
        print(f"wrote {config.output_png}", file=sys.stderr)
    return 0
