"""The backend contract every model backend implements (ONNX Runtime on CPU, TensorRT on GPU)."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.ops.schema import KV_DTYPES, KV_SCALE_MODES, canonical_dtype
from trtkv.runtime.backends.cpu_matmul import check_cpu_matmul_mode
from trtkv.runtime.backends.native_ops import check_native_ops_mode
from trtkv.runtime.plan import StepPlan


@dataclass(frozen=True)
class BackendConfig:
    """Options of a model backend."""

    backend: str = field(default="onnxruntime", metadata={"help": "onnxruntime (CPU) or tensorrt (NVIDIA GPU)"})
    kv_dtype: str = field(default="auto", metadata={"help": "KV pool dtype: auto (the export's), fp32, fp16, bf16, fp8, int8"})
    kv_scales: str = field(default="auto", metadata={"help": "KV scales: auto (the export's), static or dynamic"})
    num_blocks: int = field(default=0, metadata={"help": "KV blocks in the device pool; 0 = size from --kv-cache-gib"})
    block_size: int = field(default=0, metadata={"help": "tokens per KV block; 0 = the manifest's"})
    kv_cache_gib: float = field(default=0.5, metadata={"help": "KV pool size in GiB when --num-blocks is 0"})
    num_host_blocks: int = field(default=0, metadata={"help": "KV blocks in the host-memory tier (swap / offload)"})
    num_threads: int = field(default=0, metadata={"help": "CPU threads for ONNX Runtime; 0 = all cores"})
    native_ops: str = field(default="auto", metadata={
        "help": "native CPU kernels for the trtkv ops (onnxruntime): auto (when they build here), on, off"})
    cpu_matmul: str = field(default="auto", metadata={
        "help": "MatMul compute on onnxruntime: auto (bf16 on AMX for bf16 exports), bf16 (every weight, AMX), fp32"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "fraction of GPU memory trtkv may use (tensorrt)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_dtype", canonical_dtype(self.kv_dtype))  # float16 -> fp16, ...
        if self.kv_dtype != "auto" and self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"--kv-dtype {self.kv_dtype!r} is not supported; use auto or one of {', '.join(KV_DTYPES)}")
        if self.kv_scales not in ("auto", *KV_SCALE_MODES):
            raise ConfigError(f"--kv-scales must be auto, {' or '.join(KV_SCALE_MODES)}, got {self.kv_scales!r}")
        if self.num_blocks < 0:
            raise ConfigError(f"--num-blocks must be >= 0, got {self.num_blocks}")
        if self.block_size < 0 or (self.block_size & (self.block_size - 1)):
            raise ConfigError(f"--block-size must be a power of two, got {self.block_size}")
        if not (math.isfinite(self.kv_cache_gib) and self.kv_cache_gib > 0):
            raise ConfigError(f"--kv-cache-gib must be a finite number > 0, got {self.kv_cache_gib}")
        if self.num_threads < 0:
            raise ConfigError(f"--num-threads must be >= 0 (0 = all cores), got {self.num_threads}")
        check_native_ops_mode(self.native_ops)
        check_cpu_matmul_mode(self.cpu_matmul)
        if self.cpu_matmul == "bf16" and self.backend != "onnxruntime":
            raise ConfigError("--cpu-matmul bf16 is for the onnxruntime backend (TensorRT engines take the "
                              "export's dtype: export with --dtype bf16)")
        if self.num_host_blocks < 0:
            raise ConfigError(f"--num-host-blocks must be >= 0, got {self.num_host_blocks}")
        if not (math.isfinite(self.gpu_memory_utilization) and 0 < self.gpu_memory_utilization <= 1):
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    def resolve_manifest(self, manifest: Manifest) -> Manifest:
        """The manifest with this config's KV dtype (scales: the export's, or defaults) and
        scale mode.

        Raises:
            ConfigError: dynamic scales for a KV dtype without that layout.
        """
        m = manifest if self.kv_dtype == "auto" else manifest.with_kv(self.kv_dtype)
        return m if self.kv_scales == "auto" else m.with_scale_mode(self.kv_scales)

    def resolve_block_size(self, manifest: Manifest) -> int:
        return self.block_size or manifest.block_size

    def resolve_num_blocks(self, manifest: Manifest) -> int:
        """Pool size in blocks: explicit, or as many as fit in ``kv_cache_gib``."""
        if self.num_blocks:
            return self.num_blocks
        per_block = manifest.kv_bytes_per_token() * self.resolve_block_size(manifest)
        return max(1, int(self.kv_cache_gib * 2**30) // per_block)

    def check_host_memory(self, pool_bytes: int) -> None:
        """A host-memory pool must fit in this machine's RAM (else a MemoryError later).

        Raises:
            ConfigError: it does not; says how much there is.
        """
        total = host_memory_bytes()
        if total is not None and pool_bytes > total:
            raise ConfigError(
                f"the KV pool needs {pool_bytes / 2**30:.1f} GiB but this machine has {total / 2**30:.1f} GiB of "
                "memory; lower --kv-cache-gib / --num-blocks / --num-host-blocks"
            )


def host_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


class BaseBackend(ABC):
    """Runs the model over a paged KV pool that the backend owns.

    Attributes:
        manifest: the exported model's manifest.
        num_blocks: device pool size in blocks; block ids are 0 .. num_blocks-1.
        block_size: tokens per block.
        num_host_blocks: host tier size in blocks (0 = no swapping).
    """

    manifest: Manifest
    num_blocks: int
    block_size: int
    num_host_blocks: int
    max_logits_rows: int | None = None
    """Most logits rows one step may ask for (an engine profile's bound); None: no bound."""
    supports_block_io: bool = False
    """Whether `read_blocks` / `write_host_blocks` work (needed by the shared store tier)."""

    @abstractmethod
    def execute(self, plan: StepPlan) -> np.ndarray:
        """Run one step: block moves (swap_out, swap_in, block_copies) then the forward pass.

        Returns:
            float32 [R, vocab]: logits of the last token of each sequence with ``sample`` set
            (of its last ``1 + num_draft`` tokens with a speculative draft; of every token
            with ``all_logits``), in plan order.
        """

    @abstractmethod
    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy device blocks src -> dst in every layer (copy-on-write)."""

    @abstractmethod
    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks: pairs of (device_block, host_block)."""

    @abstractmethod
    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy host blocks to device blocks: pairs of (host_block, device_block)."""

    def read_blocks(self, block_ids: Sequence[int]) -> np.ndarray:
        """Copies of device blocks in every layer: [n, L, 2, block_size, Hkv, D], the pool's
        storage dtype. Only valid between steps (after `execute` returned)."""
        raise NotImplementedError(f"{type(self).__name__} cannot read KV blocks for a store")

    def write_host_blocks(self, host_block_ids: Sequence[int], data: np.ndarray) -> None:
        """Write host blocks from ``data`` [n, L, 2, block_size, Hkv, D] (pool dtype)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write host KV blocks")

    def read_host_blocks(self, host_block_ids: Sequence[int]) -> np.ndarray:
        """Copies of host blocks: [n, L, 2, block_size, Hkv, D], the pool's storage dtype."""
        raise NotImplementedError(f"{type(self).__name__} cannot read host KV blocks")

    def apply_block_moves(self, plan: StepPlan) -> None:
        if plan.swap_out:
            self.swap_out(plan.swap_out)
        if plan.swap_in:
            self.swap_in(plan.swap_in)
        if plan.block_copies:
            self.copy_blocks(plan.block_copies)
