"""TensorRT backend (NVIDIA GPU): runs a `trtkv build` engine over a device KV pool.

The pool is one torch CUDA tensor per layer, [N, 2, B, Hkv, D] in the manifest's KV dtype
(fp8 pools of lowered engines as int8 bit patterns, see build.json ``kv_pool_input_dtype``),
bound as the engine's read-only ``kv_cache.{i}`` inputs: the engine never writes them. The
step's stored K/V (``key_stored.{i}``/``value_stored.{i}``, reusable scratch buffers) are
copied into the pool at ``slot_mapping`` after the engine runs, on the same stream: O(new
tokens), the same contract as the ONNX Runtime backend (see trtkv.build.network). N is sized
from free GPU memory x ``gpu_memory_utilization`` unless ``num_blocks`` is given. Block moves
(copy-on-write, swap to/from pinned host memory) are indexed copies on the same stream.

The engine's flavor (full TensorRT or TensorRT for RTX) and attention route come from its
build.json; plugin engines load the libtrtkv_plugins.so stored beside them.

Imports tensorrt and torch lazily (in ``__init__``); importing this module needs neither.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.build.engine_builder import BUILD_INFO_FILE, ENGINE_FILE
from trtkv.build.network import ATTENTION_WORKSPACE_INPUT
from trtkv.build.plugin_library import PLUGIN_LIBRARY_NAME, find_plugin_library
from trtkv.build.tensorrt_env import INSTALL_HINT, import_tensorrt, load_plugin_library, make_logger
from trtkv.errors import BackendUnavailableError, ConfigError, ModelDirError
from trtkv.manifest import (
    KEY_STORED_OUTPUT,
    KV_CACHE_INPUT,
    LOGITS_OUTPUT,
    VALUE_STORED_OUTPUT,
    Manifest,
)
from trtkv.ops.schema import KV_DTYPE_SPECS
from trtkv.runtime.backends.attention_plan import AttentionPlanner
from trtkv.runtime.backends.base import BackendConfig, BaseBackend
from trtkv.runtime.backends.inputs import build_step_inputs
from trtkv.runtime.plan import StepPlan

#: Memory kept free beyond the engine's own needs (CUDA context, allocator slack), bytes.
_HEADROOM_BYTES = 512 * 2**20


def _import_torch_cuda() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(f"the tensorrt backend needs torch with CUDA; {INSTALL_HINT}") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "the tensorrt backend needs a CUDA GPU and a CUDA build of torch "
            "(torch.cuda.is_available() is False); use --backend onnxruntime on CPU"
        )
    return torch


def _torch_kv_dtype(torch: Any, kv_dtype: str) -> Any:
    return getattr(torch, KV_DTYPE_SPECS[kv_dtype].torch)


def _read_build_info(engine_dir: Path) -> dict[str, Any]:
    path = engine_dir / BUILD_INFO_FILE
    if not path.is_file():
        return {}
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot read {path} ({exc}); rebuild the engine with `trtkv build`") from exc
    return info


def plan_num_blocks(
    *, free_bytes: int, total_bytes: int, utilization: float, engine_bytes: int, scratch_bytes: int,
    bytes_per_block: int, min_blocks: int, max_blocks: int,
) -> int:
    """Blocks of KV pool that fit: (total x utilization) minus memory already in use, the engine's
    activations and scratch, capped at the profile's largest pool.

    Raises:
        ConfigError: fewer blocks fit than one max-length sequence needs; says how to fit.
    """
    in_use = total_bytes - free_bytes
    budget = int(total_bytes * utilization) - in_use - engine_bytes - scratch_bytes - _HEADROOM_BYTES
    blocks = min(max(budget, 0) // bytes_per_block, max_blocks)
    if blocks < min_blocks:
        need_gib = (min_blocks * bytes_per_block) / 2**30
        have_gib = max(budget, 0) / 2**30
        raise ConfigError(
            f"the KV pool needs {need_gib:.2f} GiB for one max-length sequence but only {have_gib:.2f} GiB "
            f"fit ({free_bytes / 2**30:.1f} GiB free of {total_bytes / 2**30:.1f}); raise "
            "--gpu-memory-utilization, rebuild with a smaller --max-model-len / --max-num-tokens, "
            "export with --kv-dtype fp8 or int8, or free the GPU"
        )
    return blocks


class TensorRTBackend(BaseBackend):
    """See module docstring. ``model_dir`` is an engine directory from `trtkv build`."""

    def __init__(self, model_dir: str | Path, manifest: Manifest, config: BackendConfig) -> None:
        engine_dir = Path(model_dir)
        engine_path = engine_dir / ENGINE_FILE
        if not engine_path.is_file():
            raise ModelDirError(
                f"{engine_dir} has no {ENGINE_FILE}: --backend tensorrt runs an engine directory; build "
                f"one with `trtkv build {engine_dir} -o engines/NAME` and pass engines/NAME"
            )
        info = _read_build_info(engine_dir)
        trt = import_tensorrt(info.get("flavor", "trt"))
        torch = _import_torch_cuda()
        self._trt, self._torch = trt, torch
        self.manifest = manifest
        self.device = torch.device("cuda")
        self.stream = torch.cuda.Stream()
        self.num_host_blocks = config.num_host_blocks

        local_plugin = engine_dir / PLUGIN_LIBRARY_NAME
        self._logger = make_logger(trt)
        plugin_path: Path | None = None
        if info.get("attention", "plugin") == "plugin":
            plugin_path = local_plugin if local_plugin.is_file() else find_plugin_library()
            load_plugin_library(trt, plugin_path)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ModelDirError(
                f"TensorRT cannot load {engine_path} ({'; '.join(self._logger.errors[-3:])}); rebuild it "
                "with this TensorRT version and GPU"
            )
        self._runtime = runtime
        self.block_size, self.max_num_tokens, self.max_blocks_per_seq, max_pool = self._profile_limits()
        self.max_logits_rows = int(self.engine.get_tensor_profile_shape("logits_indices", 0)[2][0])
        if config.block_size and config.block_size != self.block_size:
            raise ConfigError(
                f"--block-size {config.block_size} differs from the engine's {self.block_size}; "
                "rebuild the engine with --block-size or drop the option"
            )
        m = manifest
        kv_dtype = _torch_kv_dtype(torch, info.get("kv_pool_input_dtype", m.kv_dtype))
        stored_dtype = _torch_kv_dtype(torch, m.kv_dtype)
        width = m.pool_head_dim  # head_dim, + the exponent bytes of dynamic int8 scales (lowered engines)
        bytes_per_block = 2 * self.block_size * m.num_kv_heads * width * KV_DTYPE_SPECS[m.kv_dtype].itemsize * m.num_layers
        scratch_bytes = 2 * self.max_num_tokens * m.num_kv_heads * width * KV_DTYPE_SPECS[m.kv_dtype].itemsize * m.num_layers
        if config.num_blocks:
            self.num_blocks = config.num_blocks
            if self.num_blocks > max_pool:
                raise ConfigError(f"--num-blocks {self.num_blocks} exceeds the engine's maximum {max_pool}; rebuild with --max-num-blocks")
        else:
            free, total = torch.cuda.mem_get_info()
            self.num_blocks = plan_num_blocks(
                free_bytes=free, total_bytes=total, utilization=config.gpu_memory_utilization,
                engine_bytes=int(self._engine_device_memory()), scratch_bytes=scratch_bytes,
                bytes_per_block=bytes_per_block, min_blocks=self.max_blocks_per_seq, max_blocks=max_pool,
            )
        shape = (self.num_blocks, 2, self.block_size, m.num_kv_heads, width)
        self.pools = [torch.zeros(shape, dtype=kv_dtype, device=self.device) for _ in range(m.num_layers)]
        host_shape = (self.num_host_blocks, *shape[1:])
        self.host_pools = [torch.zeros(host_shape, dtype=kv_dtype).pin_memory() for _ in range(m.num_layers)] if self.num_host_blocks else []
        scratch = (self.max_num_tokens, m.num_kv_heads, width)
        self._stored = [
            (torch.empty(scratch, dtype=stored_dtype, device=self.device),
             torch.empty(scratch, dtype=stored_dtype, device=self.device))
            for _ in range(m.num_layers)
        ]
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError("TensorRT could not create an execution context (out of GPU memory?)")
        self._planner: AttentionPlanner | None = None
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if ATTENTION_WORKSPACE_INPUT in names and plugin_path is not None:
            max_seqs = int(self.engine.get_tensor_profile_shape("context_lens", 0)[2][0])
            self._planner = AttentionPlanner(
                plugin_path, m, block_size=self.block_size, num_blocks=self.num_blocks,
                max_blocks_per_seq=self.max_blocks_per_seq, max_tokens=self.max_num_tokens, max_seqs=max_seqs,
                torch=torch)

    def _profile_limits(self) -> tuple[int, int, int, int]:
        """(block_size, max tokens, max blocks per sequence, max pool blocks) of profile 0."""
        kv0 = KV_CACHE_INPUT.format(layer=0)
        pool_max = self.engine.get_tensor_profile_shape(kv0, 0)[2]
        tables_max = self.engine.get_tensor_profile_shape("block_tables", 0)[2]
        ids_max = self.engine.get_tensor_profile_shape("input_ids", 0)[2]
        return int(pool_max[2]), int(ids_max[0]), int(tables_max[1]), int(pool_max[0])

    def _engine_device_memory(self) -> int:
        for attr in ("device_memory_size_v2", "device_memory_size"):
            if hasattr(self.engine, attr):
                return int(getattr(self.engine, attr))
        return 0

    # -- step --------------------------------------------------------------------------------

    def execute(self, plan: StepPlan) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            self.apply_block_moves(plan)
            if not plan.seqs:
                return np.zeros((0, self.manifest.vocab_size), dtype=np.float32)
            inputs = build_step_inputs(plan, self.block_size)
            num_tokens = len(inputs.input_ids)
            if num_tokens > self.max_num_tokens:
                raise ConfigError(
                    f"step has {num_tokens} tokens, the engine at most {self.max_num_tokens}; "
                    "lower max_num_batched_tokens or rebuild with a larger --max-num-tokens"
                )
            ctx = self.context
            keep: dict[str, Any] = {}  # device copies must outlive the launch
            for name, value in inputs.as_dict().items():
                tensor = torch.from_numpy(np.ascontiguousarray(value)).to(self.device, non_blocking=True)
                keep[name] = tensor
                ctx.set_input_shape(name, tuple(value.shape))
                ctx.set_tensor_address(name, tensor.data_ptr())
            if self._planner is not None:  # one FlashInfer plan for every layer of the step
                self._planner.plan(inputs.query_start_loc, inputs.context_lens, inputs.block_tables,
                                   keep["block_tables"], self.stream.cuda_stream)
                ctx.set_input_shape(ATTENTION_WORKSPACE_INPUT, tuple(self._planner.device.shape))
                ctx.set_tensor_address(ATTENTION_WORKSPACE_INPUT, self._planner.device.data_ptr())
            for i, pool in enumerate(self.pools):
                name = KV_CACHE_INPUT.format(layer=i)
                ctx.set_input_shape(name, tuple(pool.shape))
                ctx.set_tensor_address(name, pool.data_ptr())
                ks, vs = self._stored[i]
                ctx.set_tensor_address(KEY_STORED_OUTPUT.format(layer=i), ks.data_ptr())
                ctx.set_tensor_address(VALUE_STORED_OUTPUT.format(layer=i), vs.data_ptr())
            logits = torch.empty((len(inputs.logits_indices), self.manifest.vocab_size), dtype=torch.float32, device=self.device)
            ctx.set_tensor_address(LOGITS_OUTPUT, logits.data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(self._logger.errors[-3:])}")
            self._write_pool(inputs.slot_mapping, num_tokens)
            result = logits.to("cpu", non_blocking=False)
            self.stream.synchronize()
            del keep
            return result.numpy()

    def _write_pool(self, slot_mapping: np.ndarray, num_tokens: int) -> None:
        """Copy the step's stored K/V into the pools at their slots (rows of [N*2*B, Hkv, D])."""
        torch, b = self._torch, self.block_size
        slots = torch.from_numpy(np.ascontiguousarray(slot_mapping)).to(self.device, non_blocking=True)
        k_rows = (slots // b) * (2 * b) + slots % b
        v_rows = k_rows + b
        m = self.manifest
        for pool, (ks, vs) in zip(self.pools, self._stored, strict=True):
            rows = pool.view(-1, m.num_kv_heads, m.pool_head_dim)
            rows.index_copy_(0, k_rows, ks[:num_tokens].view(pool.dtype))
            rows.index_copy_(0, v_rows, vs[:num_tokens].view(pool.dtype))

    # -- block moves ---------------------------------------------------------------------------

    def _index(self, values: Sequence[int], device: Any) -> Any:
        return self._torch.as_tensor(list(values), dtype=self._torch.long, device=device)

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        src = self._index([s for s, _ in pairs], self.device)
        dst = self._index([d for _, d in pairs], self.device)
        with self._torch.cuda.stream(self.stream):
            for pool in self.pools:
                pool.index_copy_(0, dst, pool.index_select(0, src))

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        self._require_host_tier()
        dev = self._index([d for d, _ in pairs], self.device)
        host = self._index([h for _, h in pairs], "cpu")
        with self._torch.cuda.stream(self.stream):
            for pool, host_pool in zip(self.pools, self.host_pools, strict=True):
                host_pool.index_copy_(0, host, pool.index_select(0, dev).to("cpu"))

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        self._require_host_tier()
        host = self._index([h for h, _ in pairs], "cpu")
        dev = self._index([d for _, d in pairs], self.device)
        with self._torch.cuda.stream(self.stream):
            for pool, host_pool in zip(self.pools, self.host_pools, strict=True):
                pool.index_copy_(0, dev, host_pool.index_select(0, host).to(self.device, non_blocking=True))

    def _require_host_tier(self) -> None:
        if not self.host_pools:
            raise ConfigError("the plan swaps KV blocks but --num-host-blocks is 0; set it to enable swapping")
