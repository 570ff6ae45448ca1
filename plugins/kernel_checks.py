"""GPU numerics checks of the trtkv kernels through the C ABI (libtrtkv_kernels.so).

Shared by tests/plugins/test_kernels_gpu.py and scripts/gpu_check.py. Inputs are random and
built in numpy; torch is used only for CUDA buffers and the stream (imported lazily). The
oracle is `trtkv.ops.reference` in float64.

Error metric (fp16/bf16/fp32 outputs): ``||out - round(ref)|| / ||ref||`` where ``ref`` is
the float64 reference from the same inputs and stored KV codes and ``round`` casts it to the
output dtype, i.e. the error the kernel adds beyond the unavoidable rounding of its output.
The raw ``||out - ref|| / ||ref||`` is reported too. fp8/int8 pools are checked against the
reference over the same quantized codes ("the quantized reference").
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from trtkv.ops import reference

DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2, "fp8": 3, "int8": 4}
NUMPY_DTYPES = reference.KV_NUMPY_DTYPES
#: numpy view used to move each dtype's raw bytes through torch.
_RAW_VIEWS = {"fp32": np.float32, "fp16": np.int16, "bf16": np.int16, "fp8": np.int8, "int8": np.int8}


class KernelLib:
    """ctypes binding of libtrtkv_kernels.so; tensor arguments are torch CUDA tensors."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        p, i32, i64, f32, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t
        lib.trtkv_abi_version.restype = i32
        lib.trtkv_status_string.restype = ctypes.c_char_p
        lib.trtkv_status_string.argtypes = [i32]
        lib.trtkv_kv_append.restype = i32
        lib.trtkv_kv_append.argtypes = [p] * 8 + [i64, i32, i32, i64, i32, i32, i32, i32, i32, p]
        lib.trtkv_paged_attention_workspace_size.restype = sz
        lib.trtkv_paged_attention_workspace_size.argtypes = [i64, i32, i32, i32, i32, i32, i32, i32]
        lib.trtkv_paged_attention_num_splits.restype = i32
        lib.trtkv_paged_attention_num_splits.argtypes = [i64, i32, i32, i32, i32, i32, i32, i32]
        lib.trtkv_paged_attention.restype = i32
        lib.trtkv_paged_attention.argtypes = (
            [p] * 11 + [sz, i64, i32, i32, i32, i32, i64, i32, i32, i32, i32, f32, i32, f32, i32, i32, i32, p]
        )
        lib.trtkv_abi_version.argtypes = []
        self.abi = int(lib.trtkv_abi_version())
        if self.abi >= 2:  # dynamic int8 KV scales
            lib.trtkv_kv_append_grouped_checked.restype = i32
            lib.trtkv_kv_append_grouped_checked.argtypes = (
                [p] * 8 + [i64, i32, i32, i64, i32, i32, i32, i32, i32, i32, p, p])
            lib.trtkv_paged_attention_grouped_checked.restype = i32
            lib.trtkv_paged_attention_grouped_checked.argtypes = (
                [p] * 11 + [sz, i64, i32, i32, i32, i32, i64, i32, i32, i32, i32, f32, i32, f32, i32, i32, i32, i32,
                            p, p])
        self.lib = lib
        if lib.trtkv_abi_version() not in (1, 2):  # 2 added functions; the ones used here are unchanged
            raise RuntimeError("libtrtkv_kernels.so has an unexpected ABI version")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.trtkv_status_string(status).decode()}")

    def kv_append(self, t: dict[str, Any], compute: str, kv: str, stream: int = 0, scale_groups: int = 0) -> None:
        key, pool = t["key"], t["kv_cache"]
        if scale_groups:
            self._check(self.lib.trtkv_kv_append_grouped_checked(
                key.data_ptr(), t["value"].data_ptr(), t["slot_mapping"].data_ptr(), pool.data_ptr(),
                t["k_scale"].data_ptr(), t["v_scale"].data_ptr(), t["key_stored"].data_ptr(),
                t["value_stored"].data_ptr(), key.shape[0], key.shape[1], key.shape[2], pool.shape[0], pool.shape[2],
                t["k_scale"].numel(), t["v_scale"].numel(), DTYPE_CODES[compute], DTYPE_CODES[kv], scale_groups,
                None, stream,
            ), "trtkv_kv_append_grouped_checked")
            return
        self._check(self.lib.trtkv_kv_append(
            key.data_ptr(), t["value"].data_ptr(), t["slot_mapping"].data_ptr(), pool.data_ptr(),
            t["k_scale"].data_ptr(), t["v_scale"].data_ptr(), t["key_stored"].data_ptr(), t["value_stored"].data_ptr(),
            key.shape[0], key.shape[1], key.shape[2], pool.shape[0], pool.shape[2],
            t["k_scale"].numel(), t["v_scale"].numel(), DTYPE_CODES[compute], DTYPE_CODES[kv], stream,
        ), "trtkv_kv_append")

    def num_splits(self, t: dict[str, Any], num_splits: int = 0) -> int:
        q, pool, tables = t["query"], t["kv_cache"], t["block_tables"]
        return int(self.lib.trtkv_paged_attention_num_splits(
            q.shape[0], tables.shape[0], q.shape[1], pool.shape[3], q.shape[2], pool.shape[2], tables.shape[1], num_splits))

    def paged_attention(self, t: dict[str, Any], compute: str, kv: str, *, scale: float = 0.0,
                        sliding_window: int = 0, softcap: float = 0.0, num_splits: int = 0, stream: int = 0,
                        workspace: Any = None, scale_groups: int = 0) -> None:
        import torch

        q, pool, tables = t["query"], t["kv_cache"], t["block_tables"]
        size = self.lib.trtkv_paged_attention_workspace_size(
            q.shape[0], tables.shape[0], q.shape[1], pool.shape[3], q.shape[2], pool.shape[2], tables.shape[1], num_splits)
        if workspace is None or workspace.numel() < size:
            workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=q.device)
        if scale_groups:
            self._check(self.lib.trtkv_paged_attention_grouped_checked(
                q.data_ptr(), t["key"].data_ptr(), t["value"].data_ptr(), pool.data_ptr(),
                t["query_start_loc"].data_ptr(), t["context_lens"].data_ptr(), tables.data_ptr(),
                t["k_scale"].data_ptr(), t["v_scale"].data_ptr(), t["output"].data_ptr(), workspace.data_ptr(), size,
                q.shape[0], tables.shape[0], q.shape[1], pool.shape[3], q.shape[2], pool.shape[0], pool.shape[2],
                tables.shape[1], t["k_scale"].numel(), t["v_scale"].numel(), scale, sliding_window, softcap,
                num_splits, DTYPE_CODES[compute], DTYPE_CODES[kv], scale_groups, None, stream,
            ), "trtkv_paged_attention_grouped_checked")
            return
        self._check(self.lib.trtkv_paged_attention(
            q.data_ptr(), t["key"].data_ptr(), t["value"].data_ptr(), pool.data_ptr(),
            t["query_start_loc"].data_ptr(), t["context_lens"].data_ptr(), tables.data_ptr(),
            t["k_scale"].data_ptr(), t["v_scale"].data_ptr(), t["output"].data_ptr(), workspace.data_ptr(), size,
            q.shape[0], tables.shape[0], q.shape[1], pool.shape[3], q.shape[2], pool.shape[0], pool.shape[2],
            tables.shape[1], t["k_scale"].numel(), t["v_scale"].numel(), scale, sliding_window, softcap,
            num_splits, DTYPE_CODES[compute], DTYPE_CODES[kv], stream,
        ), "trtkv_paged_attention")


# -- numpy <-> torch ---------------------------------------------------------------------------


def to_device(array: np.ndarray, dtype_name: str | None = None) -> Any:
    """Upload a numpy array (ml_dtypes bf16/fp8 included) as a CUDA tensor of the same dtype."""
    import torch

    if dtype_name is None:
        return torch.from_numpy(np.ascontiguousarray(array)).cuda()
    raw = torch.from_numpy(np.ascontiguousarray(array).view(_RAW_VIEWS[dtype_name])).cuda()
    target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
              "fp8": torch.float8_e4m3fn, "int8": torch.int8}[dtype_name]
    return raw.view(target)


def to_host(tensor: Any, dtype_name: str) -> np.ndarray:
    import torch

    raw_torch = {np.float32: torch.float32, np.int16: torch.int16, np.int8: torch.int8}[_RAW_VIEWS[dtype_name]]
    raw = tensor.view(raw_torch).cpu().numpy()
    return raw.view(NUMPY_DTYPES[dtype_name])


# -- random cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionCase:
    """One PagedAttention problem: sequences as (context_len, new_tokens)."""

    name: str
    seqs: tuple[tuple[int, int], ...]
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 128
    block_size: int = 16
    compute: str = "fp16"
    kv: str = "fp16"
    per_head_scale: bool = False
    sliding_window: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    num_splits: int = 0
    pad_tokens: int = 0
    scale_groups: int = 0  # > 0: dynamic int8 scales (kv "int8"), G exponents per row


def _round(x: np.ndarray, dtype_name: str) -> np.ndarray:
    return x.astype(NUMPY_DTYPES[dtype_name]).astype(np.float64)


def make_attention_inputs(case: AttentionCase, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs: query in the compute dtype, history + new K/V as stored codes."""
    H, Hkv, D, B = case.num_heads, case.num_kv_heads, case.head_dim, case.block_size
    lens = [n for _, n in case.seqs]
    qsl = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    T = int(qsl[-1]) + case.pad_tokens
    ctx = np.array([c for c, _ in case.seqs], dtype=np.int32)
    blocks_per_seq = [max(1, -(-(c + n) // B)) for c, n in case.seqs]
    M = max(blocks_per_seq)
    num_blocks = sum(blocks_per_seq) + 3
    ids = rng.permutation(num_blocks)
    tables = np.zeros((len(case.seqs), M), dtype=np.int32)
    at = 0
    for s, nb in enumerate(blocks_per_seq):
        tables[s, :nb] = ids[at:at + nb]
        at += nb
    n_scale = Hkv if case.per_head_scale else 1
    quantized = case.kv in ("fp8", "int8")
    amax = {"fp8": 448.0, "int8": 127.0}.get(case.kv, 1.0)
    k_scale = (rng.uniform(0.5, 2.0, n_scale) * 3.0 / amax).astype(np.float32) if quantized else np.ones(1, np.float32)
    v_scale = (rng.uniform(0.5, 2.0, n_scale) * 3.0 / amax).astype(np.float32) if quantized else np.ones(1, np.float32)
    pool_f = rng.standard_normal((num_blocks, 2, B, Hkv, D)).astype(np.float32)
    query = rng.standard_normal((T, H, D)).astype(NUMPY_DTYPES[case.compute])
    if case.scale_groups:  # dynamic scales: values far past a fixed int8 scale's range
        G, one = case.scale_groups, np.full(1, 1 / 16, np.float32)  # static scales: ignored with dynamic ones
        key_f, value_f = (rng.standard_normal((T, Hkv, D)).astype(np.float32) * 30 for _ in range(2))
        return {"query": query, "key": reference.quantize_dynamic(key_f, G),
                "value": reference.quantize_dynamic(value_f, G),
                "kv_cache": reference.quantize_dynamic(pool_f * 30, G), "query_start_loc": qsl,
                "context_lens": ctx, "block_tables": tables, "k_scale": one, "v_scale": one}
    pool = np.concatenate([
        reference.quantize(pool_f[:, 0], k_scale, case.kv)[:, None],
        reference.quantize(pool_f[:, 1], v_scale, case.kv)[:, None],
    ], axis=1)
    key = reference.quantize(rng.standard_normal((T, Hkv, D)).astype(np.float32), k_scale, case.kv)
    value = reference.quantize(rng.standard_normal((T, Hkv, D)).astype(np.float32), v_scale, case.kv)
    return {"query": query, "key": key, "value": value, "kv_cache": pool, "query_start_loc": qsl,
            "context_lens": ctx, "block_tables": tables, "k_scale": k_scale, "v_scale": v_scale}


def reference_attention(case: AttentionCase, x: dict[str, np.ndarray]) -> np.ndarray:
    """float64 reference over the same stored codes."""
    return reference.paged_attention(
        x["query"].astype(np.float64), x["key"], x["value"], x["kv_cache"], x["query_start_loc"],
        x["context_lens"], x["block_tables"], x["k_scale"], x["v_scale"],
        scale=case.scale, sliding_window=case.sliding_window, softcap=case.softcap)


@dataclass(frozen=True)
class CheckResult:
    name: str
    error: float      # beyond output rounding (asserted)
    raw_error: float  # vs float64, output rounding included (reported)
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance


def tolerance_for(compute: str) -> float:
    return 1e-5 if compute == "fp32" else 1e-3


def run_attention_case(lib: KernelLib, case: AttentionCase, rng: np.random.Generator) -> CheckResult:
    import torch

    x = make_attention_inputs(case, rng)
    t = {k: to_device(v, case.kv if k in ("key", "value", "kv_cache") else (case.compute if k == "query" else None))
         for k, v in x.items()}
    t["output"] = torch.full_like(t["query"], float("nan"))
    lib.paged_attention(t, case.compute, case.kv, scale=case.scale, sliding_window=case.sliding_window,
                        softcap=case.softcap, num_splits=case.num_splits, scale_groups=case.scale_groups)
    torch.cuda.synchronize()
    out = to_host(t["output"], case.compute).astype(np.float64)
    ref = reference_attention(case, x)
    n = int(x["query_start_loc"][-1])
    norm = float(np.linalg.norm(ref[:n])) or 1.0
    error = float(np.linalg.norm(out[:n] - _round(ref[:n], case.compute))) / norm
    raw = float(np.linalg.norm(out[:n] - ref[:n])) / norm
    if case.pad_tokens and np.any(out[n:] != 0):
        error = float("inf")  # padding rows must be zeroed
    splits = lib.num_splits(t, case.num_splits)
    return CheckResult(case.name, error, raw, tolerance_for(case.compute), f"splits={splits}")


def run_kv_append_case(lib: KernelLib, name: str, compute: str, kv: str, rng: np.random.Generator, *,
                       per_head_scale: bool, num_tokens: int = 77, num_kv_heads: int = 4, head_dim: int = 80,
                       block_size: int = 16, num_blocks: int = 12, scale_groups: int = 0) -> CheckResult:
    """Stored codes and pool contents must equal the reference's (same float32 division).
    ``scale_groups`` > 0: dynamic int8 scales (kv "int8")."""
    import torch

    if scale_groups:
        return _run_kv_append_dynamic(lib, name, compute, rng, scale_groups, num_tokens, num_kv_heads, head_dim,
                                      block_size, num_blocks)

    quantized = kv in ("fp8", "int8")
    n_scale = num_kv_heads if per_head_scale else 1
    amax = {"fp8": 448.0, "int8": 127.0}.get(kv, 1.0)
    k_scale = (rng.uniform(0.5, 2.0, n_scale) * 4.0 / amax).astype(np.float32) if quantized else np.ones(1, np.float32)
    v_scale = (rng.uniform(0.5, 2.0, n_scale) * 4.0 / amax).astype(np.float32) if quantized else np.ones(1, np.float32)
    key = (rng.standard_normal((num_tokens, num_kv_heads, head_dim)) * 1.5).astype(NUMPY_DTYPES[compute])
    value = (rng.standard_normal((num_tokens, num_kv_heads, head_dim)) * 1.5).astype(NUMPY_DTYPES[compute])
    slots = rng.choice(num_blocks * block_size, size=num_tokens, replace=False).astype(np.int64)
    slots[rng.random(num_tokens) < 0.1] = -1  # padding tokens: skipped
    pool0 = reference.quantize(rng.standard_normal((num_blocks, 2, block_size, num_kv_heads, head_dim)).astype(np.float32),
                               np.ones(1, np.float32) if not quantized else k_scale[:1], kv)
    ref_pool = pool0.copy()
    ref_k, ref_v = reference.kv_append(key, value, slots, ref_pool, k_scale, v_scale)
    t = {"key": to_device(key, compute), "value": to_device(value, compute), "slot_mapping": to_device(slots),
         "kv_cache": to_device(pool0, kv), "k_scale": to_device(k_scale), "v_scale": to_device(v_scale)}
    t["key_stored"] = torch.empty((num_tokens, num_kv_heads, head_dim), dtype=t["kv_cache"].dtype, device="cuda")
    t["value_stored"] = torch.empty_like(t["key_stored"])
    lib.kv_append(t, compute, kv)
    torch.cuda.synchronize()
    got = [to_host(t[k], kv).astype(np.float64) for k in ("key_stored", "value_stored", "kv_cache")]
    want = [a.astype(np.float64) for a in (ref_k, ref_v, ref_pool)]
    mismatches = sum(int(np.sum(g != w)) for g, w in zip(got, want, strict=True))
    total = sum(g.size for g in got)
    return CheckResult(name, mismatches / total, mismatches / total, 0.0, f"{mismatches} of {total} codes differ")


def kv_append_dynamic_inputs(compute: str, rng: np.random.Generator, groups: int, num_tokens: int,
                             num_kv_heads: int, head_dim: int, block_size: int, num_blocks: int) -> dict[str, Any]:
    """Inputs of a dynamic-scale KVAppend and the reference's codes and pool (NumPy)."""
    spread = np.exp(rng.uniform(-6, 6, (num_tokens, num_kv_heads, 1)))  # per-row magnitudes far apart
    key = (rng.standard_normal((num_tokens, num_kv_heads, head_dim)) * spread).astype(NUMPY_DTYPES[compute])
    value = (rng.standard_normal((num_tokens, num_kv_heads, head_dim)) * spread).astype(NUMPY_DTYPES[compute])
    key.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # NaN -> 0, infinities saturate
    key[1, 0] = 0.0  # a row of zeros: the smallest exponent
    slots = rng.choice(num_blocks * block_size, size=num_tokens, replace=False).astype(np.int64)
    slots[rng.random(num_tokens) < 0.1] = -1
    pool0 = reference.quantize_dynamic(
        rng.standard_normal((num_blocks, 2, block_size, num_kv_heads, head_dim)).astype(np.float32), groups)
    ref_pool = pool0.copy()
    one = np.ones(1, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ref_k, ref_v = reference.kv_append(key, value, slots, ref_pool, one, one)
    return {"key": key, "value": value, "slot_mapping": slots, "kv_cache": pool0, "k_scale": one, "v_scale": one,
            "ref_k": ref_k, "ref_v": ref_v, "ref_pool": ref_pool}


def _run_kv_append_dynamic(lib: KernelLib, name: str, compute: str, rng: np.random.Generator, groups: int,
                           num_tokens: int, num_kv_heads: int, head_dim: int, block_size: int,
                           num_blocks: int) -> CheckResult:
    import torch

    x = kv_append_dynamic_inputs(compute, rng, groups, num_tokens, num_kv_heads, head_dim, block_size, num_blocks)
    t = {"key": to_device(x["key"], compute), "value": to_device(x["value"], compute),
         "slot_mapping": to_device(x["slot_mapping"]), "kv_cache": to_device(x["kv_cache"], "int8"),
         "k_scale": to_device(x["k_scale"]), "v_scale": to_device(x["v_scale"])}
    t["key_stored"] = torch.empty(x["ref_k"].shape, dtype=torch.int8, device="cuda")
    t["value_stored"] = torch.empty_like(t["key_stored"])
    lib.kv_append(t, compute, "int8", scale_groups=groups)
    torch.cuda.synchronize()
    got = [to_host(t[k], "int8") for k in ("key_stored", "value_stored", "kv_cache")]
    want = [x["ref_k"], x["ref_v"], x["ref_pool"]]
    mismatches = sum(int(np.sum(g != w)) for g, w in zip(got, want, strict=True))
    total = sum(g.size for g in got)
    return CheckResult(name, mismatches / total, mismatches / total, 0.0, f"{mismatches} of {total} codes differ")


def default_attention_cases(quick: bool = False) -> list[AttentionCase]:
    """Mixed batches, GQA/MQA/MHA, head_dim 48/64/80/128/256, window, soft-cap, split-KV, dtypes."""
    mixed = ((0, 37), (100, 1), (45, 16), (0, 1), (300, 1), (17, 5))
    cases = [
        AttentionCase("mixed fp16/fp16 GQA 8:2 D128", mixed),
        AttentionCase("mixed bf16/bf16 GQA 8:2 D128", mixed, compute="bf16", kv="bf16"),
        AttentionCase("mixed fp32/fp32 D64", mixed, compute="fp32", kv="fp32", head_dim=64),
        AttentionCase("mixed fp16/fp8 per-tensor", mixed, kv="fp8"),
        AttentionCase("mixed bf16/fp8 per-head", mixed, compute="bf16", kv="fp8", per_head_scale=True),
        AttentionCase("mixed fp16/int8 per-head", mixed, kv="int8", per_head_scale=True),
        AttentionCase("MQA 8:1 D80", mixed, num_kv_heads=1, head_dim=80),
        AttentionCase("MHA 4:4 D48", mixed, num_heads=4, num_kv_heads=4, head_dim=48),
        AttentionCase("GQA 32:8 D256 B32", ((20, 3), (70, 1)), num_heads=32, num_kv_heads=8, head_dim=256, block_size=32),
        AttentionCase("sliding window 32", mixed, sliding_window=32),
        AttentionCase("softcap 30 + scale 0.1", mixed, softcap=30.0, scale=0.1),
        AttentionCase("window 64 + softcap 50 bf16", mixed, compute="bf16", kv="bf16", sliding_window=64, softcap=50.0),
        AttentionCase("split-KV forced 5", ((700, 1), (1200, 1), (33, 4)), num_splits=5),
        AttentionCase("split-KV auto long decode", ((3000, 1), (2500, 1)), num_heads=8, num_kv_heads=8),
        AttentionCase("split-KV auto fp8 per-head", ((2048, 1), (1500, 1), (999, 1)), kv="fp8", per_head_scale=True),
        AttentionCase("padding tokens zeroed", ((10, 3), (5, 1)), pad_tokens=4),
        AttentionCase("prefill 130 from empty", ((0, 130),)),
        AttentionCase("mixed fp16/int8 dynamic G4 D128", mixed, kv="int8", scale_groups=4),
        AttentionCase("split-KV forced bf16/int8 dynamic G1 D80", ((700, 1), (1200, 1), (33, 4)), compute="bf16",
                      kv="int8", head_dim=80, scale_groups=1, num_splits=5),
    ]
    return cases[:4] + cases[12:14] + cases[-1:] if quick else cases


def default_kv_append_cases() -> list[tuple[str, str, str, bool]]:
    """(name, compute dtype, kv dtype, per-head scale); the dynamic-scale cases are
    `default_kv_append_dynamic_cases`."""
    return [
        ("kv_append fp32->fp32", "fp32", "fp32", False),
        ("kv_append fp16->fp16", "fp16", "fp16", False),
        ("kv_append bf16->bf16", "bf16", "bf16", False),
        ("kv_append fp16->fp8 per-tensor", "fp16", "fp8", False),
        ("kv_append bf16->fp8 per-head", "bf16", "fp8", True),
        ("kv_append fp16->int8 per-head", "fp16", "int8", True),
        ("kv_append fp32->int8 per-tensor", "fp32", "int8", False),
    ]


def default_kv_append_dynamic_cases() -> list[tuple[str, str, int, int]]:
    """(name, compute dtype, scale groups, head_dim) of dynamic int8 KVAppend checks."""
    return [
        ("kv_append fp16->int8 dynamic G2 D64", "fp16", 2, 64),
        ("kv_append bf16->int8 dynamic G1 D80", "bf16", 1, 80),
        ("kv_append fp32->int8 dynamic G4 D128", "fp32", 4, 128),
    ]
