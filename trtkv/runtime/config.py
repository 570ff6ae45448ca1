"""Engine configuration: the options a user gives (`EngineConfig`, flat, one field per CLI
option) and what they resolve to (`ResolvedConfig`, `resolve_config`), once, at start.

Each option whose value a component consumes takes its default from that component's config
(`BackendConfig`, `SchedulerConfig`): one owner per default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.ops.schema import QUANTIZED_KV_DTYPES, canonical_dtype, ceil_div
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.cpu_matmul import CPU_MATMUL_MODES
from trtkv.runtime.backends.native_ops import NATIVE_OPS_MODES
from trtkv.runtime.kv.eviction import EVICTION_POLICIES
from trtkv.runtime.scheduler.config import SchedulerConfig
from trtkv.runtime.scheduler.policy import POLICIES
from trtkv.runtime.spec.config import SPECULATIVE_METHODS, SpeculativeConfig


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _of(owner: type, name: str, help: str, **metadata: Any) -> Any:
    """An option consumed by ``owner`` (a config dataclass): its default is the owner's."""
    return field(default=getattr(owner, name), metadata={"help": help, **metadata})


@dataclass(frozen=True)
class EngineConfig:
    """Options of the runtime engine (backend, KV pool, batching)."""

    backend: str = _of(BackendConfig, "backend", "model backend: onnxruntime (CPU) or tensorrt (NVIDIA GPU)",
                       choices=("onnxruntime", "tensorrt"))
    kv_dtype: str = _of(BackendConfig, "kv_dtype", "KV pool dtype: auto (the export's), fp32, fp16, bf16, fp8, "
                        "int8 (float16/bfloat16 too)", aliases=("--kv-cache-dtype",))
    kv_scales: str = _of(BackendConfig, "kv_scales", "KV scales: auto (the export's), static (per layer / KV head: "
                         "calibrated, or the defaults with --allow-uncalibrated-kv) or dynamic (int8: a scale per "
                         "token, KV head and 32 values, computed on write; no calibration; 1 byte per 32 values)",
                         choices=("auto", "static", "dynamic"))
    num_blocks: int = _of(BackendConfig, "num_blocks", "KV blocks in the pool; 0 = as many as --kv-cache-gib holds")
    block_size: int = _of(BackendConfig, "block_size", "tokens per KV block; 0 = the manifest's (export --block-size)")
    kv_cache_gib: float = _of(BackendConfig, "kv_cache_gib", "KV pool size in GiB when --num-blocks is 0")
    num_host_blocks: int = _of(BackendConfig, "num_host_blocks", "KV blocks in the host-memory tier (swap preemption)")
    num_threads: int = _of(BackendConfig, "num_threads", "CPU threads for ONNX Runtime; 0 = all cores")
    native_ops: str = _of(BackendConfig, "native_ops", "native CPU kernels for PagedAttention / KVAppend on ONNX "
                          "Runtime: auto (built with g++ on first use when ONNX Runtime's headers are installed; "
                          "else the ONNX function bodies), on (required), off (the function bodies)",
                          choices=NATIVE_OPS_MODES)
    cpu_matmul: str = _of(BackendConfig, "cpu_matmul", "MatMul compute on ONNX Runtime: auto (bf16 exports run "
                          "their linear layers in bf16 on AMX where the CPU has AMX-BF16; else float32), bf16 (every "
                          "weight rounded to bf16 at load, computed on AMX; refused without it), fp32 (float32 Gemm)",
                          choices=CPU_MATMUL_MODES)
    gpu_memory_utilization: float = _of(BackendConfig, "gpu_memory_utilization",
                                        "fraction of GPU memory for weights + KV (tensorrt)")
    max_model_len: int = _opt(0, "longest prompt + output; 0 = the model's max positions")
    max_num_seqs: int = _of(SchedulerConfig, "max_num_seqs", "most sequences running in one step")
    max_num_batched_tokens: int = _of(SchedulerConfig, "max_num_batched_tokens",
                                      "most tokens computed in one step (token budget)")
    max_num_queued_requests: int = _of(SchedulerConfig, "max_num_queued_requests",
                                       "most waiting requests; more are rejected (queue_full)")
    enable_chunked_prefill: bool = _of(SchedulerConfig, "enable_chunked_prefill", "split long prompts across steps")
    preemption_mode: str = _of(SchedulerConfig, "preemption_mode",
                               "when KV runs out: recompute or swap (needs --num-host-blocks)",
                               choices=("recompute", "swap"))
    scheduling_policy: str = _of(SchedulerConfig, "scheduling_policy",
                                 "admission order: priority (priority, then arrival), fcfs (arrival only) or "
                                 "short-first (least prompt + max_new_tokens first, aged by --aging-tokens-per-s)",
                                 choices=POLICIES)
    aging_tokens_per_s: float = _of(SchedulerConfig, "aging_tokens_per_s",
                                    "short-first: a waiting request's cost drops this many tokens per "
                                    "second, so one arriving cost/rate seconds later never goes first")
    long_prefill_threshold: int = _of(SchedulerConfig, "long_prefill_threshold",
                                      "prompts longer than this (tokens) are long prefills; 0 = no throttle")
    max_long_prefills: int = _of(SchedulerConfig, "max_long_prefills",
                                 "most long prefills (see --long-prefill-threshold) at once; others wait")
    max_new_tokens_cap: int = _opt(0, "lower every request's max_new_tokens to this; 0 = no cap")
    enable_prefix_caching: bool = _opt(False, "reuse KV blocks of shared prompt prefixes")
    prefix_eviction: str = field(default="lru", metadata={"choices": EVICTION_POLICIES, "help": "which free cached block is reused first: lru (freed longest ago), ttl (lru, "
                                "and a block free past --prefix-ttl-s expires) or cost (uncached blocks, then the "
                                "cheapest cached leaf to recompute: fewest hits x shallowest)"})
    prefix_ttl_s: float = _opt(0.0, "ttl eviction: seconds a cached block may stay free before it expires")
    kv_offload_gib: float = _opt(0.0, "host memory (GiB) keeping KV blocks evicted from the pool for reuse (needs --enable-prefix-caching)")
    kv_offload_blocks: int = _opt(0, "host offload tier size in blocks; overrides --kv-offload-gib")
    kv_store_url: str = _opt("", "shared KV store, e.g. redis://127.0.0.1:6379/0 (needs --enable-prefix-caching)")
    kv_store_ttl_s: float = _opt(3600.0, "seconds a block published to the KV store lives")
    kv_store_max_gib: float = _opt(1.0, "most GiB of KV blocks this model keeps in the store; the oldest are dropped")
    kv_store_timeout_s: float = _opt(0.1, "timeout of each KV store call; a slow or down store is skipped for a while")
    kv_disk_dir: str = _opt("", "local disk KV tier: blocks evicted from host memory are kept in files here and "
                            "loaded back on a prefix hit, across restarts (needs --enable-prefix-caching)")
    kv_disk_gib: float = _opt(4.0, "most GiB of KV block files in --kv-disk-dir; the least recently used go first")
    speculative_method: str = _of(SpeculativeConfig, "method", "speculative decoding: none, ngram (draft tokens "
                                  "looked up in the prompt and output: no extra model) or draft (--draft-model "
                                  "proposes them)", choices=SPECULATIVE_METHODS)
    num_speculative_tokens: int = _of(SpeculativeConfig, "num_speculative_tokens",
                                      "most draft tokens per sequence per step (they count against "
                                      "--max-num-batched-tokens); 0 = 4 with a --speculative-method")
    draft_model: str = _of(SpeculativeConfig, "draft_model", "--speculative-method draft: a trtkv export of a "
                           "smaller model with the same tokenizer (its own KV pool, as many tokens as the target's)")
    prompt_lookup_max: int = _of(SpeculativeConfig, "prompt_lookup_max",
                                 "ngram: longest suffix of the sequence looked up in its history (tokens)")
    prompt_lookup_min: int = _of(SpeculativeConfig, "prompt_lookup_min",
                                 "ngram: shortest suffix looked up; shorter matches propose nothing")
    allow_uncalibrated_kv: bool = _opt(False, "run an fp8/int8 KV pool on the documented default scales "
                                       "(no calibration: values past the scale's range saturate)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_dtype", canonical_dtype(self.kv_dtype))  # float16 -> fp16, ...
        tiers = self.kv_offload_gib or self.kv_offload_blocks or self.kv_store_url or self.kv_disk_dir
        if tiers and not self.enable_prefix_caching:
            raise ConfigError("--kv-offload-gib, --kv-offload-blocks, --kv-store-url and --kv-disk-dir keep "
                              "prefix-cache blocks: add --enable-prefix-caching")
        if not (math.isfinite(self.kv_disk_gib) and self.kv_disk_gib > 0):
            raise ConfigError(f"--kv-disk-gib must be a finite number > 0, got {self.kv_disk_gib}")
        for name in ("kv_offload_gib", "kv_offload_blocks", "kv_store_max_gib"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.kv_store_ttl_s <= 0 or self.kv_store_timeout_s <= 0:
            raise ConfigError("--kv-store-ttl-s and --kv-store-timeout-s must be > 0")
        if self.prefix_eviction not in EVICTION_POLICIES:
            raise ConfigError(f"--prefix-eviction must be one of {', '.join(EVICTION_POLICIES)}, "
                              f"got {self.prefix_eviction!r}")
        if self.prefix_eviction != "lru" and not self.enable_prefix_caching:
            raise ConfigError(f"--prefix-eviction {self.prefix_eviction} orders prefix-cache blocks: "
                              "add --enable-prefix-caching")
        if self.prefix_eviction == "ttl" and not self.prefix_ttl_s > 0:
            raise ConfigError("--prefix-eviction ttl needs --prefix-ttl-s SECONDS (> 0)")
        if self.prefix_ttl_s and self.prefix_eviction != "ttl":
            raise ConfigError("--prefix-ttl-s applies to --prefix-eviction ttl; add it or drop --prefix-ttl-s")
        self.speculative()  # raises on a bad combination
        if not isinstance(self.max_new_tokens_cap, int) or self.max_new_tokens_cap < 0:
            raise ConfigError(f"--max-new-tokens-cap must be an integer >= 0 (0 = no cap), "
                              f"got {self.max_new_tokens_cap!r}")

    def speculative(self) -> SpeculativeConfig:
        """Speculative decoding's options (validated).

        Raises:
            ConfigError: an option the others rule out.
        """
        return SpeculativeConfig(self.speculative_method, self.num_speculative_tokens, self.draft_model,
                                 self.prompt_lookup_max, self.prompt_lookup_min)

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
            if kv == "int8":
                how = "add --kv-scales dynamic (a scale per token, no calibration), or " + how
            raise ConfigError(f"the {manifest.kv_dtype} KV pool has no calibrated scales, so large K/V "
                              f"values would saturate silently: {how}; or pass --allow-uncalibrated-kv")

    def _offload_blocks(self, manifest: Manifest, block_size: int, max_model_len: int) -> int:
        """Host offload blocks: explicit, from --kv-offload-gib, or (a store or disk tier
        without a host tier) enough to stage one full-length prompt fetched from it."""
        if self.kv_offload_blocks:
            return self.kv_offload_blocks
        if self.kv_offload_gib:
            return max(1, int(self.kv_offload_gib * 2**30) // (manifest.kv_bytes_per_token() * block_size))
        return ceil_div(max_model_len, block_size) if self.kv_store_url or self.kv_disk_dir else 0

    def _scheduler_config(self, manifest: Manifest) -> SchedulerConfig:
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


@dataclass(frozen=True)
class CacheConfig:
    """The KV cache's shape beyond the device pool.

    Attributes:
        enable_prefix_caching: reuse blocks of shared prompt prefixes.
        num_swap_blocks: host blocks for swap preemption (host ids ``0 ..``).
        num_offload_blocks: host blocks keeping evicted cached blocks (ids after the swap
            blocks; 0 with prefix caching off).
        eviction: the device pool's eviction policy (lru, ttl, cost).
        prefix_ttl_s: with ttl, seconds a free cached block lives.
    """

    enable_prefix_caching: bool
    num_swap_blocks: int
    num_offload_blocks: int
    eviction: str = "lru"
    prefix_ttl_s: float = 0.0


@dataclass(frozen=True)
class StoreConfig:
    """The tiers below host memory: the local disk (``disk_dir`` empty: none) and the shared
    KV store (``url`` empty: none)."""

    url: str
    ttl_s: float
    max_gib: float
    timeout_s: float
    disk_dir: str = ""
    disk_gib: float = 4.0


@dataclass(frozen=True)
class ResolvedConfig:
    """Everything start-up derives from an `EngineConfig` and the model, derived once.

    Attributes:
        manifest: the export's manifest, loaded once.
        kv_manifest: the KV pool's manifest (``--kv-dtype`` applied; checked for calibrated
            scales when quantized).
        backend: the backend's options; its host pool holds the swap and offload blocks.
        scheduler: the scheduler's limits (``max_model_len`` resolved against the model).
        cache: the KV cache's tiers in host memory.
        store: the shared store tier.
        speculative: speculative decoding's options.
    """

    manifest: Manifest
    kv_manifest: Manifest
    backend: BackendConfig
    scheduler: SchedulerConfig
    cache: CacheConfig
    store: StoreConfig
    speculative: SpeculativeConfig = SpeculativeConfig()


def resolve_config(model_dir: str | Path, config: EngineConfig) -> ResolvedConfig:
    """Load the manifest and derive every start-up setting from ``config``, once.

    Raises:
        ModelDirError: not an exported model directory.
        ConfigError: an option the model or the other options rule out (message says which).
    """
    manifest = Manifest.load(model_dir, require_onnx=config.backend != "tensorrt")
    scheduler = config._scheduler_config(manifest)
    backend = BackendConfig(
        backend=config.backend, kv_dtype=config.kv_dtype, kv_scales=config.kv_scales, num_blocks=config.num_blocks,
        block_size=config.block_size, kv_cache_gib=config.kv_cache_gib, num_host_blocks=config.num_host_blocks,
        num_threads=config.num_threads, gpu_memory_utilization=config.gpu_memory_utilization,
        native_ops=config.native_ops, cpu_matmul=config.cpu_matmul,
    )
    kv_manifest = backend.resolve_manifest(manifest)
    config.check_kv_scales(kv_manifest)
    offload = config._offload_blocks(kv_manifest, backend.resolve_block_size(kv_manifest), scheduler.max_model_len)
    backend = replace(backend, num_host_blocks=config.num_host_blocks + offload)  # the offload tier's come after
    cache = CacheConfig(config.enable_prefix_caching, config.num_host_blocks, offload, config.prefix_eviction,
                        config.prefix_ttl_s)
    store = StoreConfig(config.kv_store_url, config.kv_store_ttl_s, config.kv_store_max_gib,
                        config.kv_store_timeout_s, config.kv_disk_dir, config.kv_disk_gib)
    return ResolvedConfig(manifest, kv_manifest, backend, scheduler, cache, store, config.speculative())
