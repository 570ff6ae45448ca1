"""The CUDA kernels' numerics and bounds checks on the CPU, through the emulation build.

plugins/emulation/ compiles the unmodified kernels, launchers and C ABI with g++ (each CUDA
thread a fiber, blocks one after another); this module checks that library against the float64
NumPy reference (`trtkv.ops.reference`):

- KVAppend: stored codes and pool contents byte-equal to the reference (ml_dtypes rounding:
  RNE, fp8 saturating to +-448, int8 clamped to +-127 with NaN -> 0) for fp32/fp16/bf16 inputs
  into fp32/fp16/bf16/fp8/int8 pools, rounding edge cases, and the kv_cache == nullptr path;
- PagedAttention: error beyond the output's own rounding ``||out - round(ref)|| / ||ref||``
  <= 1e-5 (fp32 outputs) or 1e-3 (fp16/bf16), for mixed prefill + decode batches, GQA/MQA/MHA,
  sliding window, soft-cap, split-KV (forced and chosen), fp8/int8 pools, padding;
- out-of-range indices are refused (error flag set, nothing read or written through them,
  refused rows zero, the other sequences still exact);
- every bounds scenario, KVAppend dtype pair and attention case, run in a child process against
  an AddressSanitizer + UBSan build (libasan preloaded, exactly sized NumPy buffers), must run
  clean, and that build does catch a deliberate out-of-bounds read (so "clean" means something).

Skipped only where g++ is missing.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trtkv.build.plugin_library import load_plugins_module
from trtkv.ops import reference

if shutil.which("g++") is None:
    pytest.skip("g++ is not on PATH", allow_module_level=True)

emu = load_plugins_module("emulation_build")
checks = load_plugins_module("kernel_checks")
AttentionCase = checks.AttentionCase
NUMPY_DTYPES = reference.KV_NUMPY_DTYPES
#: Tells the child process (this file run as a script) which sanitized library to load.
SANITIZED_ENV = "TRTKV_EMULATION_SANITIZED_LIB"


@pytest.fixture(scope="module")
def lib() -> Any:
    return emu.EmulatedKernels(emu.build_emulation_library()[0])


# -- KVAppend ------------------------------------------------------------------------------------


def _scales(kv: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kv not in ("fp8", "int8"):
        return np.ones(1, np.float32), np.ones(1, np.float32)
    amax = {"fp8": 448.0, "int8": 127.0}[kv]
    return ((rng.uniform(0.5, 2.0, n) * 4.0 / amax).astype(np.float32),
            (rng.uniform(0.5, 2.0, n) * 4.0 / amax).astype(np.float32))


def _same_bytes(a: np.ndarray, b: np.ndarray) -> int:
    """Number of elements whose stored bytes differ."""
    assert a.dtype == b.dtype and a.shape == b.shape
    width = a.dtype.itemsize
    return int(np.sum(np.any(a.view(np.uint8).reshape(-1, width) != b.view(np.uint8).reshape(-1, width), axis=1)))


def check_kv_append(lib: Any, compute: str, kv: str, *, per_head: bool, with_pool: bool = True,
                    seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    T, Hkv, D, B, N = 21, 2, 16, 4, 9
    k_scale, v_scale = _scales(kv, Hkv if per_head else 1, rng)
    key = (rng.standard_normal((T, Hkv, D)) * 1.5).astype(NUMPY_DTYPES[compute])
    value = (rng.standard_normal((T, Hkv, D)) * 1.5).astype(NUMPY_DTYPES[compute])
    slots = rng.choice(N * B, size=T, replace=False).astype(np.int64)
    slots[::5] = -1  # padding tokens: skipped
    pool0 = reference.quantize(rng.standard_normal((N, 2, B, Hkv, D)).astype(np.float32), k_scale[:1], kv)
    want_pool = pool0.copy()
    want_k, want_v = reference.kv_append(key, value, slots, want_pool, k_scale, v_scale)
    pool = pool0.copy() if with_pool else None
    got_k = np.empty_like(want_k)
    got_v = np.empty_like(want_v)
    status, flags = lib.kv_append(key, value, slots, pool, k_scale, v_scale, got_k, got_v, compute=compute, kv=kv)
    assert (status, flags) == (emu.STATUS_OK, 0), lib.emulator_error()
    assert _same_bytes(got_k, want_k) == 0 and _same_bytes(got_v, want_v) == 0
    if pool is not None:
        assert _same_bytes(pool, want_pool) == 0


KV_APPEND_COMBOS = [(c, k) for c in ("fp32", "fp16", "bf16") for k in ("fp32", "fp16", "bf16", "fp8", "int8")]


@pytest.mark.parametrize("compute,kv", KV_APPEND_COMBOS, ids=lambda v: str(v))
def test_kv_append_codes_equal_reference(lib: Any, compute: str, kv: str) -> None:
    check_kv_append(lib, compute, kv, per_head=False)
    if kv in ("fp8", "int8"):
        check_kv_append(lib, compute, kv, per_head=True, seed=2)


@pytest.mark.parametrize(("name", "compute", "groups", "head_dim"), checks.default_kv_append_dynamic_cases(),
                         ids=lambda v: str(v))
def test_kv_append_dynamic_scales_equal_reference(lib: Any, name: str, compute: str, groups: int,
                                                  head_dim: int) -> None:
    """Dynamic int8 scales (a scale per token, KV head and group, its exponent stored after the
    codes): codes, exponents and pool rows byte-equal to the reference, NaN / infinities / a
    zero row included; the same with no pool (stored codes only)."""
    check_kv_append_dynamic(lib, compute, groups, head_dim)


def check_kv_append_dynamic(lib: Any, compute: str, groups: int, head_dim: int) -> None:
    for with_pool in (True, False):
        x = checks.kv_append_dynamic_inputs(compute, np.random.default_rng(3), groups, 29, 3, head_dim, 4, 11)
        pool = x["kv_cache"].copy() if with_pool else None
        got_k, got_v = np.empty_like(x["ref_k"]), np.empty_like(x["ref_v"])
        status, flags = lib.kv_append(x["key"], x["value"], x["slot_mapping"], pool, x["k_scale"], x["v_scale"],
                                      got_k, got_v, compute=compute, kv="int8", scale_groups=groups,
                                      num_blocks=11, block_size=4)
        assert (status, flags) == (emu.STATUS_OK, 0), lib.emulator_error()
        np.testing.assert_array_equal(got_k, x["ref_k"])
        np.testing.assert_array_equal(got_v, x["ref_v"])
        if pool is not None:
            np.testing.assert_array_equal(pool, x["ref_pool"])


def test_dynamic_scale_arguments_are_checked(lib: Any) -> None:
    """Groups that do not fit head_dim (or a non-int8 pool) are refused before any launch."""
    x = checks.kv_append_dynamic_inputs("fp32", np.random.default_rng(4), 2, 5, 2, 64, 4, 6)
    k, v = np.empty_like(x["ref_k"]), np.empty_like(x["ref_v"])
    for groups, kv in ((3, "int8"), (16, "int8"), (2, "fp16")):  # 64 % 3, 64 / 16 = 4 (not % 8), not int8
        status, _ = lib.kv_append(x["key"], x["value"], x["slot_mapping"], None, x["k_scale"], x["v_scale"], k, v,
                                  compute="fp32", kv=kv, scale_groups=groups, num_blocks=6, block_size=4)
        assert status == emu.STATUS_INVALID_ARGUMENT, (groups, kv)


def _edge_values() -> np.ndarray:
    """Ties and limits of every target format, as fp32."""
    ties = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8,  # fp16, bf16 ties
            1 + 2.0**-4, 1 + 3 * 2.0**-4, 464.0, 448.0, 449.0, 480.0, 1e6, -1e6,  # fp8 ties/saturation
            0.5, 1.5, 2.5, -2.5, 126.5, 127.4, 127.5, 128.0, 300.0, -300.0,  # int8 ties/clamp
            2.0**-25, 3 * 2.0**-25, 2.0**-10, 3 * 2.0**-10, 2.0**-24 * 1.5,  # fp16/fp8 subnormals
            65504.0, 65519.0, 65520.0, 1e30, -0.0, 0.0, 3.3895314e38, float("inf"), float("-inf")]
    return np.array(ties + [0.0] * (-len(ties) % 8), np.float32)


@pytest.mark.parametrize("kv", ["fp16", "bf16", "fp8", "int8"])
def test_kv_append_rounding_edges(lib: Any, kv: str) -> None:
    values = _edge_values()
    if kv in ("fp8", "int8"):
        values = np.concatenate([values, np.array([np.nan] + [0.0] * 7, np.float32)])
    key = values.reshape(-1, 1, 8)
    ones = np.ones(1, np.float32)
    with np.errstate(over="ignore"):
        want = reference.quantize(key, ones, kv)
    got = np.empty_like(want)
    got_v = np.empty_like(want)
    status, flags = lib.kv_append(key, key.copy(), np.full(key.shape[0], -1, np.int64), None, ones, ones, got,
                                  got_v, compute="fp32", kv=kv)
    assert (status, flags) == (emu.STATUS_OK, 0)
    bad = [(float(x), got.reshape(-1)[i], want.reshape(-1)[i]) for i, x in enumerate(values)
           if got.view(np.uint8).reshape(values.size, -1)[i].tobytes() != want.view(np.uint8).reshape(values.size, -1)[i].tobytes()]
    assert not bad, f"{kv}: (input, kernel, reference) {bad}"


def _random_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bit patterns (every exponent, NaN/inf included) and log-uniform magnitudes."""
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    scaled = rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 6, n)
    return np.concatenate([bits, scaled.astype(np.float32)])


@pytest.mark.parametrize("kv", ["fp16", "bf16", "fp8", "int8"])
def test_encoders_match_ml_dtypes_on_random_floats(lib: Any, kv: str) -> None:
    values = _random_floats(np.random.default_rng(11), 1 << 15).reshape(-1, 1, 32)
    ones = np.ones(1, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = reference.quantize(values, ones, kv).astype(np.float32)
    got = np.empty(values.shape, NUMPY_DTYPES[kv])
    status, _ = lib.kv_append(values, values, np.full(values.shape[0], -1, np.int64), None, ones, ones, got,
                              None, compute="fp32", kv=kv)
    assert status == emu.STATUS_OK
    got32 = got.astype(np.float32)
    wrong = ~((got32 == want) | (np.isnan(got32) & np.isnan(want)))
    assert not wrong.any(), f"{int(wrong.sum())} wrong, e.g. {values[wrong][:4]} -> {got32[wrong][:4]} vs {want[wrong][:4]}"


@pytest.mark.parametrize("compute", ["fp16", "bf16"])
def test_decoders_match_ml_dtypes_on_every_code(lib: Any, compute: str) -> None:
    """All 65536 codes read as the compute dtype and stored into an fp32 pool."""
    codes = np.arange(1 << 16, dtype=np.uint16).view(NUMPY_DTYPES[compute]).reshape(-1, 1, 32)
    ones = np.ones(1, np.float32)
    got = np.empty(codes.shape, np.float32)
    status, _ = lib.kv_append(codes, codes, np.full(codes.shape[0], -1, np.int64), None, ones, ones, got, None,
                              compute=compute, kv="fp32")
    assert status == emu.STATUS_OK
    want = codes.astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)


def test_fp8_decoder_matches_ml_dtypes_on_every_code(lib: Any) -> None:
    """One new token and no history: the output is the token's value row, decoded, exactly."""
    D = 256
    value = np.arange(D, dtype=np.uint8).view(NUMPY_DTYPES["fp8"]).reshape(1, 1, D)
    x = {"query": np.zeros((1, 1, D), np.float32), "key": np.zeros_like(value), "value": value,
         "kv_cache": np.zeros((1, 2, 8, 1, D), NUMPY_DTYPES["fp8"]), "query_start_loc": np.array([0, 1], np.int32),
         "context_lens": np.zeros(1, np.int32), "block_tables": np.zeros((1, 1), np.int32),
         "k_scale": np.ones(1, np.float32), "v_scale": np.ones(1, np.float32)}
    out = np.full((1, 1, D), -7.0, np.float32)
    status, flags = lib.paged_attention(x, out, compute="fp32", kv="fp8")
    assert (status, flags) == (emu.STATUS_OK, 0)
    assert np.array_equal(out.reshape(-1), value.reshape(-1).astype(np.float32), equal_nan=True)


def check_kv_append_without_pool(lib: Any) -> None:
    """kv_cache == nullptr: stored codes only; slots checked iff num_blocks > 0, never read otherwise."""
    rng = np.random.default_rng(3)
    key = rng.standard_normal((6, 2, 16)).astype(np.float16)
    value = rng.standard_normal((6, 2, 16)).astype(np.float16)
    k_scale, v_scale = _scales("fp8", 2, rng)
    want_k = reference.quantize(key, k_scale, "fp8")
    want_v = reference.quantize(value, v_scale, "fp8")
    got_k, got_v = np.empty_like(want_k), np.empty_like(want_v)
    status, flags = lib.kv_append(key, value, None, None, k_scale, v_scale, got_k, got_v, compute="fp16",
                                  kv="fp8", num_blocks=0, block_size=0)
    assert (status, flags) == (emu.STATUS_OK, 0)
    assert _same_bytes(got_k, want_k) == 0 and _same_bytes(got_v, want_v) == 0
    slots = np.array([0, 5, 39, 40, -1, 1 << 40], np.int64)  # N * B = 40
    got_k[...] = 0
    status, flags = lib.kv_append(key, value, slots, None, k_scale, v_scale, got_k, None, compute="fp16",
                                  kv="fp8", num_blocks=10, block_size=4)
    assert (status, flags) == (emu.STATUS_OK, emu.ERROR_SLOT)
    assert _same_bytes(got_k, want_k) == 0  # every token's codes are still produced
    status, _ = lib.kv_append(key, value, slots, None, k_scale, v_scale, None, None, compute="fp16", kv="fp8")
    assert status == emu.STATUS_INVALID_ARGUMENT  # nothing to write at all


def test_kv_append_without_pool_writes_only_stored_codes(lib: Any) -> None:
    check_kv_append_without_pool(lib)


def check_kv_append_refuses_bad_slots(lib: Any) -> None:
    rng = np.random.default_rng(4)
    N, B, Hkv, D = 3, 4, 1, 8
    key = rng.standard_normal((5, Hkv, D)).astype(np.float32)
    value = rng.standard_normal((5, Hkv, D)).astype(np.float32)
    slots = np.array([0, N * B, -1, N * B - 1, (1 << 62)], np.int64)
    ones = np.ones(1, np.float32)
    pool = np.zeros((N, 2, B, Hkv, D), np.float32)
    got_k, got_v = np.empty_like(key), np.empty_like(value)
    status, flags = lib.kv_append(key, value, slots, pool, ones, ones, got_k, got_v, compute="fp32", kv="fp32")
    assert status == emu.STATUS_OK and flags == emu.ERROR_SLOT
    assert lib.lib.trtkv_status_from_error_flags(flags) == emu.STATUS_INVALID_INPUT
    want = np.zeros_like(pool)
    reference.kv_append(key[[0, 3]], value[[0, 3]], slots[[0, 3]], want, ones, ones)
    np.testing.assert_array_equal(pool, want)  # only the in-range slots were written
    np.testing.assert_array_equal(got_k, key)


def test_kv_append_refuses_out_of_range_slots(lib: Any) -> None:
    check_kv_append_refuses_bad_slots(lib)


# -- PagedAttention --------------------------------------------------------------------------------

MIXED = ((0, 37), (100, 1), (45, 16), (0, 1), (300, 1), (17, 5))
SHORT = ((0, 9), (40, 1), (23, 4), (70, 1))
ATTENTION_CASES = [
    AttentionCase("mixed fp16/fp16 GQA 8:2 D64", MIXED, head_dim=64),
    AttentionCase("mixed bf16/bf16 GQA 4:2 D128", SHORT, num_heads=4, compute="bf16", kv="bf16"),
    AttentionCase("mixed fp32/fp32 D32", MIXED, compute="fp32", kv="fp32", head_dim=32),
    AttentionCase("fp16/fp8 per-tensor", SHORT, kv="fp8", head_dim=32),
    AttentionCase("bf16/fp8 per-head", SHORT, compute="bf16", kv="fp8", per_head_scale=True, head_dim=32),
    AttentionCase("fp16/int8 per-head", SHORT, kv="int8", per_head_scale=True, head_dim=32),
    AttentionCase("fp32/int8 per-tensor", SHORT, compute="fp32", kv="int8", head_dim=32),
    AttentionCase("fp32/int8 dynamic G2 D64 mixed", MIXED, compute="fp32", kv="int8", head_dim=64, scale_groups=2),
    AttentionCase("fp16/int8 dynamic G1 D48 window", SHORT, kv="int8", head_dim=48, scale_groups=1, sliding_window=7),
    AttentionCase("bf16/int8 dynamic G4 split-KV forced 3", ((300, 1), (90, 2)), compute="bf16", kv="int8",
                  head_dim=128, scale_groups=4, num_splits=3),
    AttentionCase("MQA 8:1 D80", SHORT, num_kv_heads=1, head_dim=80),
    AttentionCase("MHA 4:4 D48", SHORT, num_heads=4, num_kv_heads=4, head_dim=48),
    AttentionCase("GQA 16:4 D256 B32 (smem > 48 KiB)", ((20, 3), (70, 1)), num_heads=16, num_kv_heads=4,
                  head_dim=256, block_size=32),
    AttentionCase("sliding window 32", MIXED, head_dim=32, sliding_window=32),
    AttentionCase("softcap 30 + scale 0.1", SHORT, head_dim=32, softcap=30.0, scale=0.1),
    AttentionCase("window 16 + softcap 50 bf16", SHORT, compute="bf16", kv="bf16", head_dim=32,
                  sliding_window=16, softcap=50.0),
    AttentionCase("split-KV forced 5", ((700, 1), (1200, 1), (33, 4)), head_dim=32, num_splits=5),
    AttentionCase("split-KV auto long decode", ((1500, 1), (1100, 1)), num_heads=4, num_kv_heads=4, head_dim=32),
    AttentionCase("split-KV auto fp8 per-head + window", ((900, 1), (1000, 1)), kv="fp8", per_head_scale=True,
                  head_dim=32, sliding_window=200),
    AttentionCase("padding tokens zeroed", ((10, 3), (5, 1)), head_dim=32, pad_tokens=4),
    AttentionCase("prefill 130 from empty", ((0, 130),), num_heads=4, head_dim=32),
]


def _attention_error(case: Any, x: dict[str, np.ndarray], out: np.ndarray, rows: np.ndarray) -> float:
    ref = checks.reference_attention(case, x)[rows]
    norm = float(np.linalg.norm(ref)) or 1.0
    return float(np.linalg.norm(out[rows].astype(np.float64) - checks._round(ref, case.compute))) / norm


def run_attention(lib: Any, case: Any, x: dict[str, np.ndarray], num_splits: int | None = None) -> tuple[np.ndarray, int, int]:
    out = np.full(x["query"].shape, np.nan, x["query"].dtype)
    status, flags = lib.paged_attention(x, out, compute=case.compute, kv=case.kv, scale=case.scale,
                                        sliding_window=case.sliding_window, softcap=case.softcap,
                                        num_splits=case.num_splits if num_splits is None else num_splits,
                                        scale_groups=case.scale_groups)
    return out, status, flags


def check_attention_case(lib: Any, case: Any) -> None:
    x = checks.make_attention_inputs(case, np.random.default_rng(0))
    out, status, flags = run_attention(lib, case, x)
    assert (status, flags) == (emu.STATUS_OK, 0), lib.emulator_error()
    n = int(x["query_start_loc"][-1])
    error = _attention_error(case, x, out, np.arange(n))
    assert error <= checks.tolerance_for(case.compute), f"{case.name}: error {error:.2e}"
    assert np.all(out[n:] == 0), "padding rows must be zeroed"


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.name)
def test_paged_attention_matches_reference(lib: Any, case: Any) -> None:
    check_attention_case(lib, case)


def test_split_kv_cases_do_split(lib: Any) -> None:
    for case in ATTENTION_CASES:
        if case.name.startswith("split-KV"):
            x = checks.make_attention_inputs(case, np.random.default_rng(0))
            T, H, D = x["query"].shape
            S, M = x["block_tables"].shape
            splits = lib.num_splits(T, S, H, case.num_kv_heads, D, case.block_size, M, case.num_splits)
            assert splits > 1, case.name


def check_leading_tokens_outside_sequences(lib: Any) -> None:
    """query_start_loc[0] > 0: the leading tokens belong to no sequence and get zero output."""
    case = AttentionCase("lead", ((12, 3), (30, 1)), head_dim=32, pad_tokens=2)
    x = checks.make_attention_inputs(case, np.random.default_rng(5))
    x["query_start_loc"] = (x["query_start_loc"] + 2).astype(np.int32)  # tokens 0, 1 are unused
    for splits in (1, 3):
        out, status, flags = run_attention(lib, case, x, num_splits=splits)
        assert (status, flags) == (emu.STATUS_OK, 0)
        assert np.all(out[:2] == 0)
        assert _attention_error(case, x, out, np.arange(2, 6)) <= 1e-3


def test_leading_tokens_outside_sequences_are_zeroed(lib: Any) -> None:
    check_leading_tokens_outside_sequences(lib)


# -- refused indices -------------------------------------------------------------------------------

BOUNDS_CASE = AttentionCase("bounds", ((30, 2), (17, 1), (8, 3), (50, 1)), num_heads=4, num_kv_heads=2,
                            head_dim=16, block_size=8)


def _seq_rows(x: dict[str, np.ndarray], seqs: list[int]) -> np.ndarray:
    qsl = x["query_start_loc"]
    return np.concatenate([np.arange(qsl[s], qsl[s + 1]) for s in seqs])


def check_refused_sequences(lib: Any, mutate: Callable[[dict[str, np.ndarray]], None], refused: list[int],
                            flag: int) -> None:
    """After `mutate`, the `refused` sequences get zero rows and `flag`; the others stay exact."""
    for splits in (1, 3):
        x = checks.make_attention_inputs(BOUNDS_CASE, np.random.default_rng(6))
        ok = [s for s in range(len(BOUNDS_CASE.seqs)) if s not in refused]
        mutate(x)
        out, status, flags = run_attention(lib, BOUNDS_CASE, x, num_splits=splits)
        assert status == emu.STATUS_OK and flags == flag, (flags, lib.emulator_error())
        assert lib.lib.trtkv_status_from_error_flags(flags) == emu.STATUS_INVALID_INPUT
        assert np.all(out[_seq_rows(x, refused)] == 0)
        good = _seq_rows(x, ok)
        clean = {k: v.copy() for k, v in x.items()}
        for s in refused:  # the reference cannot read the bad indices either
            clean["context_lens"][s] = 0
            clean["block_tables"][s] = 0
        assert _attention_error(BOUNDS_CASE, clean, out, good) <= 1e-3


def _set(name: str, index: tuple[int, ...], value: int) -> Callable[[dict[str, np.ndarray]], None]:
    def mutate(x: dict[str, np.ndarray]) -> None:
        x[name][index] = value
    return mutate


def check_bounds_block_ids(lib: Any) -> None:
    num_blocks = BOUNDS_CASE_NUM_BLOCKS
    check_refused_sequences(lib, _set("block_tables", (1, 2), num_blocks), [1], emu.ERROR_BLOCK_ID)
    check_refused_sequences(lib, _set("block_tables", (3, 0), -1), [3], emu.ERROR_BLOCK_ID)
    check_refused_sequences(lib, _set("block_tables", (0, 3), 1 << 30), [0], emu.ERROR_BLOCK_ID)


def check_unused_block_table_entries_are_ignored(lib: Any) -> None:
    """Entries past a sequence's context are padding: any value is fine and never read."""
    x = checks.make_attention_inputs(BOUNDS_CASE, np.random.default_rng(6))
    tables = x["block_tables"]
    for s, (ctx, _) in enumerate(BOUNDS_CASE.seqs):
        tables[s, -(-ctx // BOUNDS_CASE.block_size):] = -1
    out, status, flags = run_attention(lib, BOUNDS_CASE, x)
    assert (status, flags) == (emu.STATUS_OK, 0)
    assert _attention_error(BOUNDS_CASE, x, out, np.arange(out.shape[0])) <= 1e-3


def check_bounds_context_lens(lib: Any) -> None:
    M, B = 7, BOUNDS_CASE.block_size  # make_attention_inputs: M = ceil(max(ctx + n) / B) = 7
    check_refused_sequences(lib, _set("context_lens", (2,), M * B + 1), [2], emu.ERROR_CONTEXT_LEN)
    check_refused_sequences(lib, _set("context_lens", (0,), 1 << 30), [0], emu.ERROR_CONTEXT_LEN)
    check_refused_sequences(lib, _set("context_lens", (1,), -5), [1], emu.ERROR_CONTEXT_LEN)


def check_bounds_query_start_loc(lib: Any) -> None:
    base = checks.make_attention_inputs(BOUNDS_CASE, np.random.default_rng(6))
    T = base["query"].shape[0]
    bad_locs = [
        np.array([0, 2, 1, 6, 7], np.int32),        # decreasing
        np.array([0, 2, 3, 6, T + 1], np.int32),    # past T
        np.array([-1, 2, 3, 6, 7], np.int32),       # negative
        np.array([0, 2, 3, 1 << 30, 7], np.int32),  # huge, then back
    ]
    for qsl in bad_locs:
        for splits in (1, 3):
            x = dict(base, query_start_loc=qsl)
            out, status, flags = run_attention(lib, BOUNDS_CASE, x, num_splits=splits)
            assert status == emu.STATUS_OK and flags == emu.ERROR_QUERY_START_LOC, (qsl, flags)
            assert np.all(out == 0), "a refused step has zero output"


BOUNDS_CASE_NUM_BLOCKS = sum(max(1, -(-(c + n) // BOUNDS_CASE.block_size)) for c, n in BOUNDS_CASE.seqs) + 3


def test_block_ids_out_of_range_are_refused(lib: Any) -> None:
    check_bounds_block_ids(lib)


def test_unused_block_table_entries_are_ignored(lib: Any) -> None:
    check_unused_block_table_entries_are_ignored(lib)


def test_context_lens_out_of_range_are_refused(lib: Any) -> None:
    check_bounds_context_lens(lib)


def test_bad_query_start_loc_is_refused(lib: Any) -> None:
    check_bounds_query_start_loc(lib)


# -- sanitized build (child process) ---------------------------------------------------------------

#: What the child runs against the ASan + UBSan build: every bounds scenario, every KVAppend dtype
#: pair (with and without a pool) and every attention case.
SANITIZED_SCENARIOS: dict[str, Callable[[Any], None]] = {
    "kv_append_bad_slots": check_kv_append_refuses_bad_slots,
    "kv_append_without_pool": check_kv_append_without_pool,
    "block_ids": check_bounds_block_ids,
    "unused_table_entries": check_unused_block_table_entries_are_ignored,
    "context_lens": check_bounds_context_lens,
    "query_start_loc": check_bounds_query_start_loc,
    "leading_tokens": check_leading_tokens_outside_sequences,
    **{f"kv_append {c}->{k}{' no pool' if not pool else ''}": functools.partial(
        check_kv_append, compute=c, kv=k, per_head=k in ("fp8", "int8"), with_pool=pool)
       for c, k in KV_APPEND_COMBOS for pool in (True, False)},
    **{f"attention {c.name}": functools.partial(check_attention_case, case=c) for c in ATTENTION_CASES},
    **{name: functools.partial(check_kv_append_dynamic, compute=c, groups=g, head_dim=d)
       for name, c, g, d in checks.default_kv_append_dynamic_cases()},
}


def deliberate_out_of_bounds_read(lib: Any) -> None:
    """Claims a block table wider than its allocation: the kernel reads past it (caller's bug)."""
    case = AttentionCase("oob", ((40, 1),), head_dim=16, block_size=8)
    x = checks.make_attention_inputs(case, np.random.default_rng(7))
    tables = x["block_tables"]
    x["block_tables"] = np.lib.stride_tricks.as_strided(tables, shape=(1, tables.shape[1] + 64))
    x["context_lens"][0] = (tables.shape[1] + 64) * case.block_size
    run_attention(lib, case, x)


def _run_child(lib_path: Path, scenarios: list[str]) -> subprocess.CompletedProcess[str]:
    env = emu.sanitizer_env()
    env[SANITIZED_ENV] = str(lib_path)
    return subprocess.run([sys.executable, __file__, *scenarios], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def sanitized_library(lib: Any) -> Path:  # after the -O2 build: one compiler at a time
    return emu.build_emulation_library(sanitize=True)[0]


def test_sanitized_build_runs_clean(sanitized_library: Path) -> None:
    proc = _run_child(sanitized_library, list(SANITIZED_SCENARIOS))
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Sanitizer" not in report, report[-6000:]
    assert f"{len(SANITIZED_SCENARIOS)} scenarios passed" in proc.stdout, report[-3000:]


def test_sanitized_build_catches_a_real_overrun(sanitized_library: Path) -> None:
    proc = _run_child(sanitized_library, ["deliberate_out_of_bounds_read"])
    assert proc.returncode == 86 and "heap-buffer-overflow" in proc.stderr, (proc.returncode, proc.stderr[-3000:])


def _child_main(names: list[str]) -> int:
    lib = emu.EmulatedKernels(os.environ[SANITIZED_ENV])
    table = dict(SANITIZED_SCENARIOS, deliberate_out_of_bounds_read=deliberate_out_of_bounds_read)
    for name in names:
        table[name](lib)
        print(f"ok {name}", flush=True)
    print(f"{len(names)} scenarios passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
