"""Engine configuration: one frozen dataclass whose field help is the CLI help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.ops.schema import QUANTIZED_KV_DTYPES, canonical_dtype
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.scheduler.config import SchedulerConfig
from trtkv.runtime.scheduler.policy import POLICIES


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EngineConfig:
    """Options of the runtime engine (backend, KV pool, batching)."""

    backend: str = field(default="onnxruntime", metadata={
        "help": "model backend: onnxruntime (CPU) or tensorrt (NVIDIA GPU)", "choices": ("onnxruntime", "tensorrt")})
    kv_dtype: str = field(default="auto", metadata={
        "help": "KV pool dtype: auto (the export's), fp32, fp16, bf16, fp8, int8 (float16/bfloat16 too)",
        "aliases": ("--kv-cache-dtype",)})
    num_blocks: int = _opt(0, "KV blocks in the pool; 0 = as many as --kv-cache-gib holds")
    block_size: int = _opt(0, "tokens per KV block; 0 = the manifest's (export --block-size)")
    kv_cache_gib: float = _opt(0.5, "KV pool size in GiB when --num-blocks is 0")
    num_host_blocks: int = _opt(0, "KV blocks in the host-memory tier (swap preemption)")
    num_threads: int = _opt(0, "CPU threads for ONNX Runtime; 0 = all cores")
    gpu_memory_utilization: float = _opt(0.9, "fraction of GPU memory for weights + KV (tensorrt)")
    max_model_len: int = _opt(0, "longest prompt + output; 0 = the model's max positions")
    max_num_seqs: int = _opt(64, "most sequences running in one step")
    max_num_batched_tokens: int = _opt(2048, "most tokens computed in one step (token budget)")
    max_num_queued_requests: int = _opt(1024, "most waiting requests; more are rejected (queue_full)")
    enable_chunked_prefill: bool = _opt(True, "split long prompts across steps")
    preemption_mode: str = field(default="recompute", metadata={
        "help": "when KV runs out: recompute or swap (needs --num-host-blocks)", "choices": ("recompute", "swap")})
    scheduling_policy: str = field(default="priority", metadata={
        "help": "admission order: priority (priority, then arrival), fcfs (arrival only) or "
                "short-first (least prompt + max_new_tokens first, aged by --aging-tokens-per-s)",
        "choices": POLICIES})
    aging_tokens_per_s: float = _opt(1000.0, "short-first: a waiting request's cost drops this many tokens per "
                                     "second, so one arriving cost/rate seconds later never goes first")
    long_prefill_threshold: int = _opt(0, "prompts longer than this (tokens) are long prefills; 0 = no throttle")
    max_long_prefills: int = _opt(1, "most long prefills (see --long-prefill-threshold) at once; others wait")
    max_new_tokens_cap: int = _opt(0, "lower every request's max_new_tokens to this; 0 = no cap")
    enable_prefix_caching: bool = _opt(False, "reuse KV blocks of shared prompt prefixes")
    kv_offload_gib: float = _opt(0.0, "host memory (GiB) keeping KV blocks evicted from the pool for reuse (needs --enable-prefix-caching)")
    kv_offload_blocks: int = _opt(0, "host offload tier size in blocks; overrides --kv-offload-gib")
    kv_store_url: str = _opt("", "shared KV store, e.g. redis://127.0.0.1:6379/0 (needs --enable-prefix-caching)")
    kv_store_ttl_s: float = _opt(3600.0, "seconds a block published to the KV store lives")
    kv_store_max_gib: float = _opt(1.0, "most GiB of KV blocks this model keeps in the store; the oldest are dropped")
    kv_store_timeout_s: float = _opt(0.1, "timeout of each KV store call; a slow or down store is skipped for a while")
    allow_uncalibrated_kv: bool = _opt(False, "run an fp8/int8 KV pool on the documented default scales "
                                       "(no calibration: values past the scale's range saturate)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_dtype", canonical_dtype(self.kv_dtype))  # float16 -> fp16, ...
        tiers = self.kv_offload_gib or self.kv_offload_blocks or self.kv_store_url
        if tiers and not self.enable_prefix_caching:
            raise ConfigError("--kv-offload-gib, --kv-offload-blocks and --kv-store-url keep "
                              "prefix-cache blocks: add --enable-prefix-caching")
        for name in ("kv_offload_gib", "kv_offload_blocks", "kv_store_max_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.kv_store_ttl_s <= 0 or self.kv_store_timeout_s <= 0:
            raise ConfigError("--kv-store-ttl-s and --kv-store-timeout-s must be > 0")
        if not isinstance(self.max_new_tokens_cap, int) or self.max_new_tokens_cap < 0:
            raise ConfigError(f"--max-new-tokens-cap must be an integer >= 0 (0 = no cap), "
                              f"got {self.max_new_tokens_cap!r}")

    def check_kv_scales(self, manifest: Manifest) -> None:
        """Refuse an fp8/int8 pool whose scales were never calibrated (``manifest``: the
        pool's, after --kv-dtype), unless --allow-uncalibrated-kv.

        Raises:
            ConfigError: with the commands that calibrate.
        """
        if manifest.kv_dtype in QUANTIZED_KV_DTYPES and not manifest.has_calibrated_kv_scales \
                and not self.allow_uncalibrated_kv:
            kv = manifest.kv_dtype
            how = (f"export it with --kv-dtype {kv} --calibrate 64 (or run `trtkv calibrate` on an {kv} "
                   "export, with --calibration-file FILE for your own text)")
            raise ConfigError(f"the {manifest.kv_dtype} KV pool has no calibrated scales, so large K/V "
                              f"values would saturate silently: {how}; or pass --allow-uncalibrated-kv")

    def resolve_offload_blocks(self, manifest: Manifest, block_size: int, max_model_len: int) -> int:
        """Host offload blocks: explicit, from --kv-offload-gib, or (a store without a host
        tier) enough to stage one full-length prompt fetched from the store."""
        if self.kv_offload_blocks:
            return self.kv_offload_blocks
        if self.kv_offload_gib:
            return max(1, int(self.kv_offload_gib * 2**30) // (manifest.kv_bytes_per_token() * block_size))
        return -(-max_model_len // block_size) if self.kv_store_url else 0

    def backend_config(self, num_offload_blocks: int = 0) -> BackendConfig:
        """The backend's options; its host pool also holds ``num_offload_blocks``."""
        return BackendConfig(
            backend=self.backend, kv_dtype=self.kv_dtype, num_blocks=self.num_blocks, block_size=self.block_size,
            kv_cache_gib=self.kv_cache_gib, num_host_blocks=self.num_host_blocks + num_offload_blocks,
            num_threads=self.num_threads, gpu_memory_utilization=self.gpu_memory_utilization,
        )

    def scheduler_config(self, manifest: Manifest) -> SchedulerConfig:
        max_len = self.max_model_len or manifest.max_position_embeddings
        if max_len > manifest.max_position_embeddings:
            raise ConfigError(
                f"--max-model-len {max_len} exceeds the model's max positions "
                f"({manifest.max_position_embeddings}); lower it"
            )
        if self.preemption_mode == "swap" and self.num_host_blocks == 0:
            raise ConfigError("--preemption-mode swap needs host blocks: set --num-host-blocks")
        return SchedulerConfig(
            max_model_len=max_len, max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_queued_requests=self.max_num_queued_requests,
            enable_chunked_prefill=self.enable_chunked_prefill,
            preemption_mode=self.preemption_mode,  # type: ignore[arg-type]
            scheduling_policy=self.scheduling_policy,  # type: ignore[arg-type]
            aging_tokens_per_s=self.aging_tokens_per_s,
            long_prefill_threshold=self.long_prefill_threshold,
            max_long_prefills=self.max_long_prefills,
        )
