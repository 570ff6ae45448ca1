"""`trtkv bench`: a load benchmark against a running server (--url) or the engine in-process."""

from __future__ import annotations

import sys

from trtkv.bench.config import BenchConfig
from trtkv.cli import app
from trtkv.cli._options import command
from trtkv.runtime.config import EngineConfig


@command(app, "bench", help="load benchmark: a running server (--url) or the engine in-process "
         "(--model-dir); throughput, TTFT/TPOT/ITL percentiles, JSON + PNG", rich_help_panel="Serve",
         epilog="Sends a synthetic workload (random token-id prompts, EOS ignored). Engine options "
                "apply with --model-dir only.")
def bench(config: BenchConfig, engine: EngineConfig) -> None:
    import asyncio

    from trtkv.bench.clients import create_client
    from trtkv.bench.report import format_table, summarize, to_json, write_json
    from trtkv.bench.runner import run_benchmark
    from trtkv.errors import ConfigError

    if config.url and engine != EngineConfig():
        raise ConfigError("engine options (--num-blocks, --max-num-seqs, ...) apply only with "
                          "--model-dir; with --url, set them on `trtkv serve`")
    if config.output_png:
        from trtkv.bench.plot import import_matplotlib

        import_matplotlib()  # before the run: a missing extra fails now, not after it
    run = asyncio.run(run_benchmark(config, create_client(config, engine)))
    summary = summarize(run)
    print(format_table(run, summary))
    if config.output_json:
        write_json(config.output_json, to_json(run, summary, engine if config.model_dir else None))
        print(f"wrote {config.output_json}", file=sys.stderr)
    if config.output_png:
        from trtkv.bench.plot import write_png

        write_png(config.output_png, run, summary)
        print(f"wrote {config.output_png}", file=sys.stderr)
