#!/usr/bin/env python
"""One-command GPU check of the trtkv kernels (and, where TensorRT is installed, an engine).

    python scripts/gpu_check.py [--quick] [--skip-bench] [--skip-trt]

No downloads; under 5 minutes on an H100. Steps:
  1. build libtrtkv_kernels.so for the local GPU with nvcc (-arch=native);
  2. KVAppend vs the NumPy reference (codes bit-exact; fp32/fp16/bf16/fp8/int8, per-tensor and
     per-head scales, padding slots);
  3. PagedAttention vs the float64 reference on random inputs: mixed prefill/decode batches,
     GQA/MQA/MHA, head_dim 48/64/80/128/256, sliding window, soft-cap, split-KV (forced and
     auto), fp16/bf16/fp32 compute, fp16/bf16/fp8/int8 pools; fp16/bf16 error <= 1e-3;
  4. decode-kernel bandwidth: achieved GB/s (KV bytes read / time) vs a measured device-to-
     device copy bandwidth, fp16 and fp8 pools;
  5. only if `import tensorrt` works and libtrtkv_plugins.so can be built: export a tiny
     random Llama, build an engine, and compare its logits with ONNX Runtime's.
Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from trtkv.build.plugin_library import load_plugins_module  # noqa: E402


def _header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def check_numerics(checks: ModuleType, lib: Any, quick: bool) -> bool:
    ok = True
    _header("KVAppend vs reference (stored codes and pool must match exactly)")
    for name, compute, kv, per_head in checks.default_kv_append_cases():
        r = checks.run_kv_append_case(lib, name, compute, kv, np.random.default_rng(1), per_head_scale=per_head)
        ok &= r.ok
        print(f"  {'PASS' if r.ok else 'FAIL'}  {name:40s} {r.detail}")
    _header("PagedAttention vs float64 reference (error beyond output rounding; raw error)")
    for case in checks.default_attention_cases(quick):
        r = checks.run_attention_case(lib, case, np.random.default_rng(0))
        ok &= r.ok
        print(f"  {'PASS' if r.ok else 'FAIL'}  {case.name:40s} err {r.error:.2e} (tol {r.tolerance:.0e})  "
              f"raw {r.raw_error:.2e}  {r.detail}")
    return ok


def copy_bandwidth_gbs(torch: Any, nbytes: int = 1 << 30, iters: int = 10) -> float:
    """Device-to-device copy bandwidth, counting bytes read + written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * iters / (start.elapsed_time(end) / 1e3) / 1e9


def bench_decode(checks: ModuleType, lib: Any, torch: Any, kv: str, num_seqs: int = 32, context: int = 8192,
                 num_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128, iters: int = 20) -> float:
    """Achieved GB/s of one decode step: KV bytes read (K and V of every context token) / time."""
    block = 16
    nb = -(-(context + 1) // block)
    rng = np.random.default_rng(3)
    tables = rng.permutation(num_seqs * nb).reshape(num_seqs, nb).astype(np.int32)
    elem = {"fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}[kv]
    kv_torch = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "int8": torch.int8}[kv]
    pool = torch.randn((num_seqs * nb, 2, block, num_kv_heads, head_dim), device="cuda").to(kv_torch)
    t = {
        "query": torch.randn((num_seqs, num_heads, head_dim), device="cuda", dtype=torch.float16),
        "key": torch.randn((num_seqs, num_kv_heads, head_dim), device="cuda").to(kv_torch),
        "kv_cache": pool,
        "query_start_loc": torch.arange(num_seqs + 1, dtype=torch.int32, device="cuda"),
        "context_lens": torch.full((num_seqs,), context, dtype=torch.int32, device="cuda"),
        "block_tables": torch.from_numpy(tables).cuda(),
        "k_scale": torch.full((1,), 0.01, device="cuda"), "v_scale": torch.full((1,), 0.01, device="cuda"),
    }
    t["value"] = t["key"].clone()
    t["output"] = torch.empty_like(t["query"])
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(3):
        lib.paged_attention(t, "fp16", kv, workspace=workspace)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        lib.paged_attention(t, "fp16", kv, workspace=workspace)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / iters
    nbytes = num_seqs * context * 2 * num_kv_heads * head_dim * elem
    splits = lib.num_splits(t)
    gbs = nbytes / seconds / 1e9
    print(f"  decode {kv:5s} S={num_seqs} ctx={context} H={num_heads} Hkv={num_kv_heads} D={head_dim} "
          f"splits={splits}: {seconds * 1e6:8.1f} us  {gbs:7.1f} GB/s", flush=True)
    return gbs


def check_tensorrt_end_to_end() -> bool | None:
    """Tiny random Llama: export -> build engine -> logits vs ONNX Runtime. None = skipped."""
    _header("TensorRT engine end to end")
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        print(f"  SKIP  tensorrt not importable ({exc.__class__.__name__})")
        return None
    import subprocess

    build_dir = REPO_ROOT / "build" / "plugins"
    proc = subprocess.run(["cmake", "-S", str(REPO_ROOT / "plugins"), "-B", str(build_dir)], capture_output=True, text=True)
    proc2 = subprocess.run(["cmake", "--build", str(build_dir), "-j"], capture_output=True, text=True) if proc.returncode == 0 else proc
    if proc2.returncode != 0 or not (build_dir / "libtrtkv_plugins.so").is_file():
        print("  SKIP  libtrtkv_plugins.so not built (TensorRT headers not found: set TENSORRT_ROOT)")
        print("        " + (proc.stdout + proc2.stdout)[-400:].replace("\n", "\n        "))
        return None
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trtkv.build import BuildConfig, build_engine
    from trtkv.export.exporter import ExportConfig, export
    from trtkv.manifest import Manifest
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from trtkv.runtime.backends.tensorrt_backend import TensorRTBackend
    from trtkv.runtime.plan import ScheduledSeq, StepPlan

    work = Path(tempfile.mkdtemp(prefix="trtkv-gpu-check-"))
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    hf.save_pretrained(work / "hf")
    export(work / "hf", work / "onnx", ExportConfig(dtype="fp16", progress=False))
    build_engine(work / "onnx", work / "engine", BuildConfig(max_num_tokens=64, max_num_seqs=4, max_model_len=256,
                                                             max_num_blocks=64))
    manifest = Manifest.load(work / "onnx")
    cfg = BackendConfig(num_blocks=32)
    trt_backend = TensorRTBackend(work / "engine", manifest, cfg)
    ort_backend = OnnxRuntimeBackend(work / "onnx", manifest, cfg)
    rng = np.random.default_rng(0)
    prompt_a, prompt_b = tuple(int(x) for x in rng.integers(0, 256, 20)), tuple(int(x) for x in rng.integers(0, 256, 7))
    plans = [
        StepPlan(seqs=(ScheduledSeq(0, prompt_a, 0, (3, 5), True), ScheduledSeq(1, prompt_b, 0, (9,), True))),
        StepPlan(seqs=(ScheduledSeq(0, (11,), 20, (3, 5), True), ScheduledSeq(1, (12,), 7, (9,), True))),
    ]
    ok = True
    for step, plan in enumerate(plans):
        a, b = trt_backend.execute(plan), ort_backend.execute(plan)
        err = float(np.abs(a - b).max() / (np.abs(b).max() or 1.0))
        same = bool((a.argmax(-1) == b.argmax(-1)).all())
        ok &= err < 2e-2 and same
        print(f"  {'PASS' if err < 2e-2 and same else 'FAIL'}  step {step}: max rel logits diff {err:.2e}, argmax equal {same}")
    shutil.rmtree(work, ignore_errors=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="trtkv GPU check (kernels, bandwidth, TensorRT engine)")
    parser.add_argument("--quick", action="store_true", help="fewer attention cases")
    parser.add_argument("--skip-bench", action="store_true", help="skip the decode bandwidth benchmark")
    parser.add_argument("--skip-trt", action="store_true", help="skip the TensorRT end-to-end check")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        import torch
    except ImportError:
        print("FAIL: torch is not installed (pip install torch with CUDA)")
        return 1
    if not torch.cuda.is_available():
        print("FAIL: no CUDA device visible to torch")
        return 1
    print(f"device: {torch.cuda.get_device_name()}  (torch {torch.__version__}, CUDA {torch.version.cuda})")
    nvcc_build, checks = load_plugins_module("nvcc_build"), load_plugins_module("kernel_checks")
    _header("build libtrtkv_kernels.so (nvcc -arch=native)")
    path, seconds = nvcc_build.build_kernels_library(("native",), opt_level="-O3")
    print(f"  {path} ({seconds:.1f} s)")
    lib = checks.KernelLib(str(path))
    ok = check_numerics(checks, lib, args.quick)
    if not args.skip_bench:
        _header("decode bandwidth")
        copy = copy_bandwidth_gbs(torch)
        print(f"  device copy bandwidth: {copy:.1f} GB/s (read + write)")
        for kv in ("fp16", "fp8"):
            gbs = bench_decode(checks, lib, torch, kv)
            print(f"    -> {100 * gbs / copy:.0f}% of copy bandwidth")
    if not args.skip_trt:
        trt_ok = check_tensorrt_end_to_end()
        ok &= trt_ok is not False
    print(f"\n{'ALL PASSED' if ok else 'SOME CHECKS FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
