"""Where a CPU engine step goes: per-phase wall time of `Engine.step()` and ONNX Runtime's own
profile (time and kernel count per op type) of decode and mixed steps.

    python benchmarks/profile_step.py MODEL [--streams 1 32] [--steps 24] [--threads 2]
                                            [--native-ops off on] [--cpu-matmul fp32 bf16] [--repeat 2]
                                            [--mixed-chunk 0 256]

MODEL: anything `trtkv generate` takes (an export, an HF dir, a .gguf file). Phases: schedule,
backend.execute split into the ONNX Runtime run and the KV pool scatter, sampling,
scheduler.update, and output processing (stop checks, detokenizing). Prints a table per
workload; `--json` writes the numbers. `--mixed-chunk C` adds mixed steps (the decodes plus a
C-token prefill chunk of a long prompt). Several `--native-ops` modes (the native CPU kernels
vs the ONNX function bodies) and `--cpu-matmul` modes (bf16 on AMX vs float32 Gemm) are run
alternately, `--repeat` rounds, for side-by-side ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trtkv.model_source import resolve_model  # noqa: E402
from trtkv.runtime.backends.cpu_matmul import CPU_MATMUL_MODES  # noqa: E402
from trtkv.runtime.backends.native_ops import NATIVE_OPS_MODES  # noqa: E402
from trtkv.runtime.config import EngineConfig  # noqa: E402
from trtkv.runtime.engine import Engine  # noqa: E402
from trtkv.runtime.sampling import SamplingParams  # noqa: E402


class _Timed:
    """Wraps a bound method, adding its wall time per call to ``totals[name]``."""

    def __init__(self, totals: dict[str, list[float]], name: str, fn: Any) -> None:
        self.totals, self.name, self.fn = totals, name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.name].append(time.perf_counter() - start)


def instrument(engine: Engine) -> dict[str, list[float]]:
    totals: dict[str, list[float]] = collections.defaultdict(list)
    backend = engine.backend
    session = backend.session  # type: ignore[attr-defined]
    session.run_with_iobinding = _Timed(totals, "ort_run", session.run_with_iobinding)
    backend.execute = _Timed(totals, "backend_execute", backend.execute)  # type: ignore[method-assign]
    engine.scheduler.schedule = _Timed(totals, "schedule", engine.scheduler.schedule)  # type: ignore[method-assign]
    engine.scheduler.update = _Timed(totals, "scheduler_update", engine.scheduler.update)  # type: ignore[method-assign]
    engine._sample = _Timed(totals, "sample", engine._sample)  # type: ignore[method-assign]
    engine.outputs.process = _Timed(totals, "process_outputs", engine.outputs.process)  # type: ignore[method-assign]
    return totals


def _prefill(engine: Engine) -> None:
    """Step until every sequence is decoding, so what follows measures decode steps only."""
    while engine.scheduler.num_waiting or any(
            s.num_computed < len(s.token_ids) - 1 for s in engine.scheduler._reg.running):
        engine.step()


def _config(streams: int, threads: int, prompt_len: int, native_ops: str, mixed_chunk: int = 0,
            cpu_matmul: str = "auto") -> EngineConfig:
    budget = streams + mixed_chunk if mixed_chunk else max(512, prompt_len)
    return EngineConfig(num_threads=threads, num_blocks=4096, max_num_seqs=max(streams, 1) + (1 if mixed_chunk else 0),
                        max_num_batched_tokens=budget, native_ops=native_ops, cpu_matmul=cpu_matmul)


def _start(engine: Engine, streams: int, steps: int, prompt_len: int, mixed_chunk: int) -> None:
    """``streams`` requests prefilled and decoding; with ``mixed_chunk``, then one long prompt
    whose prefill runs ``mixed_chunk`` tokens a step beside the decodes (mixed steps)."""
    vocab = engine.manifest.vocab_size
    for i in range(streams):
        prompt = [(37 * i + 11 * j) % (vocab - 10) + 5 for j in range(prompt_len)]
        engine.add_request(prompt, SamplingParams(max_new_tokens=steps + 48, temperature=0.0, ignore_eos=True))
    _prefill(engine)
    if mixed_chunk:
        long_prompt = [(13 * j) % (vocab - 10) + 5 for j in range(mixed_chunk * (steps + 12))]
        engine.add_request(long_prompt, SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True))
        engine.step()  # admission


def run_workload(model: Path, streams: int, steps: int, threads: int, prompt_len: int,
                 native_ops: str = "auto", mixed_chunk: int = 0, cpu_matmul: str = "auto") -> dict[str, Any]:
    engine = Engine(model, _config(streams, threads, prompt_len, native_ops, mixed_chunk, cpu_matmul))
    _start(engine, streams, steps, prompt_len, mixed_chunk)
    totals = instrument(engine)
    walls = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - start)
    median = {name: statistics.median(v) * 1e3 for name, v in totals.items()}
    median["step_wall"] = statistics.median(walls) * 1e3
    median["pool_scatter_and_inputs"] = median["backend_execute"] - median["ort_run"]
    return {"streams": streams, "steps": steps, "mixed_chunk": mixed_chunk,
            "native_ops": engine.backend.native_ops,  # type: ignore[attr-defined]
            "bf16_matmul": engine.backend.bf16_matmul,  # type: ignore[attr-defined]
            "ms": median, "tokens_per_s": streams / (median["step_wall"] / 1e3)}


def ort_profile(model: Path, streams: int, threads: int, prompt_len: int, native_ops: str = "auto",
                mixed_chunk: int = 0, cpu_matmul: str = "auto") -> dict[str, Any]:
    """ONNX Runtime's profiler over a few decode steps: ms and kernel count per op type per step."""
    import onnxruntime as ort

    from trtkv.runtime.backends import onnxruntime_backend as orb

    original = ort.SessionOptions
    profile_dir = Path(tempfile.mkdtemp(prefix="trtkv-ortprof-"))

    def options() -> Any:
        opts = original()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / "ort")
        return opts

    orb.ort.SessionOptions = options  # type: ignore[misc]
    try:
        engine = Engine(model, _config(streams, threads, prompt_len, native_ops, mixed_chunk, cpu_matmul))
    finally:
        orb.ort.SessionOptions = original  # type: ignore[misc]
    _start(engine, streams, 10, prompt_len, mixed_chunk)
    for _ in range(2):  # warm-up decode steps
        engine.step()
    measured = 8
    for _ in range(measured):
        engine.step()
    trace = Path(engine.backend.session.end_profiling())  # type: ignore[attr-defined]
    events = json.loads(trace.read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last = runs[-measured:]
    t0 = last[0]["ts"]
    by_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op][0] += e["dur"] / 1e3 / measured
            by_op[op][1] += 1 / measured
    top = sorted(by_op.items(), key=lambda kv: -kv[1][0])
    return {"streams": streams, "native_ops": native_ops, "cpu_matmul": cpu_matmul, "mixed_chunk": mixed_chunk,
            "per_step_ms": {k: round(v[0], 3) for k, v in top},
            "kernels_per_step": {k: round(v[1]) for k, v in top},
            "total_kernels_per_step": round(sum(v[1] for v in by_op.values())),
            "layers": engine.manifest.num_layers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--json", default="")
    parser.add_argument("--native-ops", nargs="+", default=["auto"], choices=NATIVE_OPS_MODES)
    parser.add_argument("--cpu-matmul", nargs="+", default=["auto"], choices=CPU_MATMUL_MODES)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the modes, alternated")
    parser.add_argument("--mixed-chunk", type=int, nargs="+", default=[0],
                        help="also profile mixed steps: the decodes plus a prefill chunk of this many tokens (0: none)")
    args = parser.parse_args()
    model = resolve_model(args.model)
    modes = [(native, matmul) for native in args.native_ops for matmul in args.cpu_matmul]
    report: dict[str, Any] = {"model": args.model, "threads": args.threads, "decode": [], "ort": []}
    for n, chunk in ((n, c) for n in args.streams for c in args.mixed_chunk):
        kind = f"mixed step ({n} decodes + {chunk}-token prefill chunk)" if chunk else f"decode step, {n} stream(s)"
        for round_ in range(args.repeat):
            for native, matmul in modes:
                r = run_workload(model, n, args.steps, args.threads, args.prompt_len, native, chunk, matmul)
                report["decode"].append(r)
                ms = r["ms"]
                print(f"\n== {kind}, native ops {native}, cpu matmul {matmul} (round {round_ + 1}): "
                      f"{ms['step_wall']:.2f} ms/step, {r['tokens_per_s']:.1f} tok/s")
                for name in ("schedule", "ort_run", "pool_scatter_and_inputs", "sample", "scheduler_update",
                             "process_outputs"):
                    print(f"  {name:26s} {ms.get(name, 0.0):8.3f} ms  {100 * ms.get(name, 0.0) / ms['step_wall']:5.1f}%")
    for n, chunk, (native, matmul) in ((n, c, m) for n in args.streams for c in args.mixed_chunk for m in modes):
        p = ort_profile(model, n, args.threads, args.prompt_len, native, chunk, matmul)
        report["ort"].append(p)
        kind = f"mixed ({n} decodes + {chunk}-token chunk)" if chunk else f"decode, {n} stream(s)"
        print(f"\n== ONNX Runtime profile, {kind}, native ops {native}, cpu matmul {matmul}: "
              f"{p['total_kernels_per_step']} kernels per step "
              f"({p['total_kernels_per_step'] / p['layers']:.0f} per layer)")
        for op, t in list(p["per_step_ms"].items())[:10]:
            print(f"  {op:22s} {t:8.3f} ms  x{p['kernels_per_step'][op]}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
