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
  4. decode-kernel bandwidth: achieved GB/s (KV bytes read / time) as a fraction of a measured
     device-to-device copy at DECODE_SHAPES (1 x 32k, 64 x 2k, 32 x 8k), fp16 and fp8 pools,
     pass/fail at --min-decode-fraction; fp8 / fp16 decode time; prefill TFLOP/s; a mixed
     prefill + decode step; FlashInfer's own batch decode on the same pools when
     `import flashinfer` works;
  5. only if `import tensorrt` works and libtrtkv_plugins.so can be built: export a tiny
     random Llama, build an engine, and compare its logits with ONNX Runtime's.
Writes a JSON report (--json). Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
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
    for name, compute, groups, head_dim in checks.default_kv_append_dynamic_cases():
        r = checks.run_kv_append_case(lib, name, compute, "int8", np.random.default_rng(1), per_head_scale=False,
                                      head_dim=head_dim, scale_groups=groups)
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


#: Decode shapes (sequences, context tokens) the bandwidth check runs: long single stream,
#: wide batch, and a middle point. Mixed prefill+decode and prefill are measured separately.
DECODE_SHAPES = ((1, 32768), (64, 2048), (32, 8192))


def _paged_inputs(torch: Any, kv: str, ctx_lens: list[int], new_lens: list[int], *, num_heads: int = 32,
                  num_kv_heads: int = 8, head_dim: int = 128, block: int = 16) -> dict[str, Any]:
    """Device inputs of one PagedAttention step: sequence s has ctx_lens[s] history tokens in a
    shuffled paged pool and new_lens[s] new tokens."""
    rng = np.random.default_rng(3)
    per_seq = [-(-(c + n) // block) for c, n in zip(ctx_lens, new_lens, strict=True)]
    width, total = max(per_seq), sum(per_seq)
    ids = rng.permutation(total).astype(np.int32)
    tables = np.zeros((len(ctx_lens), width), np.int32)
    at = 0
    for s, nb in enumerate(per_seq):
        tables[s, :nb] = ids[at:at + nb]
        at += nb
    kv_torch = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn, "int8": torch.int8}[kv]
    num_tokens = sum(new_lens)
    t = {
        "kv_cache": torch.randn((total, 2, block, num_kv_heads, head_dim), device="cuda").to(kv_torch),
        "query": torch.randn((num_tokens, num_heads, head_dim), device="cuda", dtype=torch.float16),
        "key": torch.randn((num_tokens, num_kv_heads, head_dim), device="cuda").to(kv_torch),
        "query_start_loc": torch.tensor(np.concatenate([[0], np.cumsum(new_lens)]), dtype=torch.int32, device="cuda"),
        "context_lens": torch.tensor(ctx_lens, dtype=torch.int32, device="cuda"),
        "block_tables": torch.from_numpy(tables).cuda(),
        "k_scale": torch.full((1,), 0.01, device="cuda"), "v_scale": torch.full((1,), 0.01, device="cuda"),
    }
    t["value"] = t["key"].clone()
    t["output"] = torch.empty_like(t["query"])
    return t


def _time_us(torch: Any, fn: Any, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) * 1e3 / iters


def bench_decode(lib: Any, torch: Any, kv: str, num_seqs: int, context: int, copy_gbs: float,
                 min_fraction: float) -> dict[str, Any]:
    """One decode step (one new token per sequence): KV bytes read / time vs device copy."""
    t = _paged_inputs(torch, kv, [context] * num_seqs, [1] * num_seqs)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    us = _time_us(torch, lambda: lib.paged_attention(t, "fp16", kv, workspace=workspace))
    elem = t["kv_cache"].element_size()
    nbytes = num_seqs * context * 2 * t["kv_cache"].shape[3] * t["kv_cache"].shape[4] * elem
    gbs = nbytes / (us / 1e6) / 1e9
    row = {"kv": kv, "num_seqs": num_seqs, "context": context, "us": round(us, 1), "gbs": round(gbs, 1),
           "fraction_of_copy": round(gbs / copy_gbs, 3), "splits": lib.num_splits(t)}
    row["pass"] = row["fraction_of_copy"] >= min_fraction
    print(f"  {'PASS' if row['pass'] else 'FAIL'}  decode {kv:5s} S={num_seqs:3d} ctx={context:6d} splits={row['splits']:3d}: "
          f"{us:9.1f} us {gbs:8.1f} GB/s = {100 * gbs / copy_gbs:5.1f}% of copy (min {100 * min_fraction:.0f}%)", flush=True)
    row["tensors"] = t
    return row


def bench_prefill(lib: Any, torch: Any, num_seqs: int = 8, new: int = 1024, context: int = 0) -> dict[str, Any]:
    """Causal prefill chunks of ``new`` tokens over ``context`` history: attention TFLOP/s
    (2 matmuls x 2 FLOP per multiply-add, causal half of the new-token block)."""
    t = _paged_inputs(torch, "fp16", [context] * num_seqs, [new] * num_seqs)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    us = _time_us(torch, lambda: lib.paged_attention(t, "fp16", "fp16", workspace=workspace), iters=5)
    heads, dim = t["query"].shape[1], t["query"].shape[2]
    pairs = num_seqs * (new * context + new * (new + 1) / 2)
    tflops = 4 * pairs * heads * dim / (us / 1e6) / 1e12
    print(f"  prefill S={num_seqs} new={new} ctx={context}: {us:9.1f} us  {tflops:6.2f} TFLOP/s", flush=True)
    return {"num_seqs": num_seqs, "new": new, "context": context, "us": round(us, 1), "tflops": round(tflops, 2)}


def bench_mixed(lib: Any, torch: Any) -> dict[str, Any]:
    """A mixed step: 4 prefill chunks of 512 over 1k history + 60 decodes over 2k history."""
    ctx, new = [1024] * 4 + [2048] * 60, [512] * 4 + [1] * 60
    t = _paged_inputs(torch, "fp16", ctx, new)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    us = _time_us(torch, lambda: lib.paged_attention(t, "fp16", "fp16", workspace=workspace), iters=5)
    print(f"  mixed 4x512 prefill + 60 decodes: {us:9.1f} us", flush=True)
    return {"prefill_chunks": 4, "decodes": 60, "us": round(us, 1)}


def compare_flashinfer(torch: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FlashInfer's own batch decode on the same pools, where its Python API imports."""
    try:
        import flashinfer
    except Exception as exc:
        print(f"  SKIP  flashinfer not importable ({exc.__class__.__name__})")
        return []
    out = []
    for row in rows:
        t = row["tensors"]
        try:
            tables, ctx = t["block_tables"], t["context_lens"]
            block = t["kv_cache"].shape[2]
            pages = (ctx + block - 1) // block
            indptr = torch.zeros(len(ctx) + 1, dtype=torch.int32, device="cuda")
            indptr[1:] = torch.cumsum(pages, 0)
            cols = torch.arange(tables.shape[1], device="cuda")
            indices = tables[cols[None, :] < pages[:, None]].to(torch.int32)
            last = (ctx - (pages - 1) * block).to(torch.int32)
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), "NHD")
            wrapper.plan(indptr, indices, last, t["query"].shape[1], t["kv_cache"].shape[3], t["query"].shape[2],
                         block, q_data_type=torch.float16, kv_data_type=t["kv_cache"].dtype)
            us = _time_us(torch, lambda w=wrapper, tt=t: w.run(tt["query"], tt["kv_cache"]))
        except Exception as exc:  # API drift between FlashInfer versions: report, do not fail
            print(f"  SKIP  flashinfer decode S={row['num_seqs']} ctx={row['context']}: {exc.__class__.__name__}: {exc}")
            continue
        ratio = row["us"] / us
        print(f"  flashinfer decode {row['kv']:5s} S={row['num_seqs']:3d} ctx={row['context']:6d}: {us:9.1f} us; "
              f"trtkv kernel takes {ratio:.2f}x its time")
        out.append({"kv": row["kv"], "num_seqs": row["num_seqs"], "context": row["context"], "us": round(us, 1),
                    "trtkv_over_flashinfer": round(ratio, 2)})
    return out


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
    # This interpreter finds the tensorrt and flashinfer wheels' headers; one cubin for this GPU.
    proc = subprocess.run(["cmake", "-S", str(REPO_ROOT / "plugins"), "-B", str(build_dir),
                           f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_CUDA_ARCHITECTURES=native"],
                          capture_output=True, text=True)
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
    # head_dim 64: the FlashInfer route when the plugins were built with it, else trtkv's kernels.
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    hf.save_pretrained(work / "hf")
    export(work / "hf", work / "onnx", ExportConfig(dtype="fp16", progress=False))
    build_engine(work / "onnx", work / "engine", BuildConfig(max_num_tokens=64, max_num_seqs=4, max_model_len=256,
                                                             max_num_blocks=64, flavor="trt", attention="plugin"))
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
    parser.add_argument("--json", default="gpu_check.json", help="where to write the JSON report")
    parser.add_argument("--min-decode-fraction", type=float, default=0.5,
                        help="decode bandwidth threshold as a fraction of device copy bandwidth")
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
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "cuda": torch.version.cuda, "nvcc_seconds": round(seconds, 1)}
    ok = check_numerics(checks, lib, args.quick)
    report["numerics_pass"] = ok
    if not args.skip_bench:
        _header("decode bandwidth (fraction of device copy), prefill TFLOP/s, mixed step")
        copy = copy_bandwidth_gbs(torch)
        print(f"  device copy bandwidth: {copy:.1f} GB/s (read + write)")
        rows = [bench_decode(lib, torch, kv, s, c, copy, args.min_decode_fraction)
                for s, c in DECODE_SHAPES for kv in ("fp16", "fp8")]
        ok &= all(r["pass"] for r in rows)
        for s, c in DECODE_SHAPES:
            fp16, fp8 = (next(r for r in rows if r["kv"] == kv and r["num_seqs"] == s) for kv in ("fp16", "fp8"))
            print(f"  fp8 / fp16 decode time S={s} ctx={c}: {fp8['us'] / fp16['us']:.2f}")
        report["copy_gbs"] = round(copy, 1)
        report["flashinfer"] = compare_flashinfer(torch, rows)
        report["decode"] = [{k: v for k, v in r.items() if k != "tensors"} for r in rows]
        report["prefill"] = [bench_prefill(lib, torch), bench_prefill(lib, torch, num_seqs=4, new=512, context=2048)]
        report["mixed"] = bench_mixed(lib, torch)
    if not args.skip_trt:
        trt_ok = check_tensorrt_end_to_end()
        report["tensorrt_end_to_end"] = trt_ok
        ok &= trt_ok is not False
    report["all_passed"] = ok
    report["seconds"] = round(time.monotonic() - started, 1)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'ALL PASSED' if ok else 'SOME CHECKS FAILED'} in {report['seconds']:.0f} s; report: {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
