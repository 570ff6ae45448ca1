"""ONNX Runtime backend (CPU): runs the exported graph over a paged KV pool held in numpy.

The pool arrays are bound to the session as zero-copy OrtValues, so ONNX Runtime reads the
sequences' histories straight from them. With the native CPU kernels (`native_ops`, the
default where they build) PagedAttention reads the pool rows in place and KVAppend writes the
step's codes into the pool itself (the stored codes are then no graph outputs); with the ONNX function bodies the PagedAttention body only
gathers rows, and the step's K/V come back as the KVAppend outputs and are scattered into the
pool here. Either way O(new tokens), independent of the pool size.

bf16 models: ONNX Runtime's CPU kernels lack bf16 MatMul/Add/..., so the graph is rewritten
at load to compute in float32 from the bf16-rounded weights; the KV pool stays bf16. Where the
CPU has AMX-BF16 the linear layers' MatMuls keep their bf16 weights and run on the native
kernel instead (`cpu_matmul`, ``--cpu-matmul``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from trtkv.errors import ConfigError, ModelDirError
from trtkv.manifest import (
    KEY_STORED_OUTPUT,
    KV_CACHE_INPUT,
    LOGITS_OUTPUT,
    VALUE_STORED_OUTPUT,
    Manifest,
    kv_graph_values,
    set_kv_width,
)
from trtkv.ops.onnx_functions import KV_ONNX_TYPES, op_functions
from trtkv.ops.reference import KV_NUMPY_DTYPES
from trtkv.ops.schema import KV_APPEND, OP_DOMAIN
from trtkv.runtime.backends.base import BackendConfig, BaseBackend
from trtkv.runtime.backends.cpu_matmul import CPU_DOMAIN, resolve_cpu_matmul, rewrite_matmuls
from trtkv.runtime.backends.inputs import build_step_inputs
from trtkv.runtime.backends.native_ops import resolve_native_ops
from trtkv.runtime.plan import StepPlan

# numpy views ONNX Runtime can wrap for storage types numpy lacks.
_ORT_VIEW = {"bf16": np.uint16, "fp8": np.uint8}


class OnnxRuntimeBackend(BaseBackend):
    """See module docstring. ``pools[i]`` is layer i's [N, 2, B, Hkv, D] pool."""

    supports_block_io = True

    def __init__(self, model_dir: str | Path, manifest: Manifest, config: BackendConfig) -> None:
        self.manifest = manifest = config.resolve_manifest(manifest)
        self.block_size = config.resolve_block_size(manifest)
        self.num_blocks = config.resolve_num_blocks(manifest)
        self.num_host_blocks = config.num_host_blocks
        native = resolve_native_ops(config.native_ops)
        bf16_matmul = resolve_cpu_matmul(config.cpu_matmul, manifest.dtype, native)
        model = _load_model(Path(model_dir), manifest, native_kv_write=native is not None, bf16_matmul=bf16_matmul)
        self.bf16_matmul = bf16_matmul and any(n.domain == CPU_DOMAIN for n in model.graph.node)
        if config.cpu_matmul == "bf16" and not self.bf16_matmul:
            raise ConfigError(f"--cpu-matmul bf16: {model_dir} has no float32 / bf16 linear layers to run in bf16 "
                              f"(a {manifest.dtype} export{' with --weights' if manifest.dtype == 'fp32' else ''}); "
                              "use an fp32 or bf16 export without --weights, or --cpu-matmul auto")
        # The backend skips its own K/V scatter only when every layer's KVAppend writes the pool.
        self.native_ops = native is not None and _count_pool_writers(model) == manifest.num_layers
        if self.native_ops:  # the stored codes stay inside the graph (PagedAttention reads them)
            _drop_stored_outputs(model)
        opts = ort.SessionOptions()
        if native is not None:
            opts.register_custom_ops_library(str(native))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if config.num_threads:
            opts.intra_op_num_threads = config.num_threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelDirError(f"ONNX Runtime cannot load {model_dir}: {exc}") from exc
        m = manifest
        kv_np = KV_NUMPY_DTYPES[m.kv_dtype]
        shape = (self.num_blocks, 2, self.block_size, m.num_kv_heads, m.pool_head_dim)
        block_bytes = m.kv_bytes_per_token() * self.block_size
        config.check_host_memory((self.num_blocks + self.num_host_blocks) * block_bytes)
        host_shape = (self.num_host_blocks, *shape[1:])
        self.pools = [np.zeros(shape, dtype=kv_np) for _ in range(m.num_layers)]  # lazily paged
        self.host_pools = [np.zeros(host_shape, dtype=kv_np) for _ in range(m.num_layers)]
        self._pool_values = [self._ortvalue(p, as_codes=True) for p in self.pools]
        self._row_stride = 2 * self.block_size

    def _ortvalue(self, array: np.ndarray, *, as_codes: bool = False) -> ort.OrtValue:
        """Zero-copy OrtValue over a KV array; ``as_codes`` binds fp8 as its uint8 codes."""
        view = _ORT_VIEW.get(self.manifest.kv_dtype)
        if view is None:
            return ort.OrtValue.ortvalue_from_numpy(array)
        if as_codes and self.manifest.kv_dtype == "fp8":
            return ort.OrtValue.ortvalue_from_numpy(array.view(view))
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            array.view(view), KV_ONNX_TYPES[self.manifest.kv_dtype]
        )

    def execute(self, plan: StepPlan) -> np.ndarray:
        self.apply_block_moves(plan)
        if not plan.seqs:
            return np.zeros((0, self.manifest.vocab_size), dtype=np.float32)
        inputs = build_step_inputs(plan, self.block_size)
        binding = self.session.io_binding()
        for name, value in inputs.as_dict().items():
            binding.bind_cpu_input(name, value)
        m = self.manifest
        num_tokens = len(inputs.input_ids)
        stored: list[tuple[np.ndarray, np.ndarray]] = []
        for i, value in enumerate(self._pool_values):
            binding.bind_ortvalue_input(KV_CACHE_INPUT.format(layer=i), value)
            if self.native_ops:
                continue
            ks = np.empty((num_tokens, m.num_kv_heads, m.pool_head_dim), dtype=self.pools[i].dtype)
            vs = np.empty_like(ks)
            binding.bind_ortvalue_output(KEY_STORED_OUTPUT.format(layer=i), self._ortvalue(ks))
            binding.bind_ortvalue_output(VALUE_STORED_OUTPUT.format(layer=i), self._ortvalue(vs))
            stored.append((ks, vs))
        logits = np.empty((len(inputs.logits_indices), m.vocab_size), dtype=np.float32)
        binding.bind_ortvalue_output(LOGITS_OUTPUT, ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(binding)
        if self.native_ops:
            return logits  # the native KVAppend wrote the pool
        slots = inputs.slot_mapping
        k_rows = (slots // self.block_size) * self._row_stride + slots % self.block_size
        for pool, (ks, vs) in zip(self.pools, stored, strict=True):
            rows = pool.reshape(-1, m.num_kv_heads, m.pool_head_dim)
            rows[k_rows] = ks
            rows[k_rows + self.block_size] = vs
        return logits

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        src, dst = _split(pairs)
        for pool in self.pools:
            pool[dst] = pool[src]

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        dev, host = _split(pairs)
        for pool, host_pool in zip(self.pools, self.host_pools, strict=True):
            host_pool[host] = pool[dev]

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        host, dev = _split(pairs)
        for pool, host_pool in zip(self.pools, self.host_pools, strict=True):
            pool[dev] = host_pool[host]

    def read_blocks(self, block_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(block_ids, dtype=np.int64)
        return np.stack([pool[ids] for pool in self.pools], axis=1)

    def read_host_blocks(self, host_block_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(host_block_ids, dtype=np.int64)
        return np.stack([host_pool[ids] for host_pool in self.host_pools], axis=1)

    def write_host_blocks(self, host_block_ids: Sequence[int], data: np.ndarray) -> None:
        ids = np.asarray(host_block_ids, dtype=np.int64)
        for i, host_pool in enumerate(self.host_pools):
            host_pool[ids] = data[:, i]


def _split(pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _drop_stored_outputs(model: onnx.ModelProto) -> None:
    """Removes the key_stored / value_stored graph outputs (no per-step buffers to bind)."""
    stored = {v.name for v in kv_graph_values(model.graph)[1]}
    outputs = model.graph.output
    for i in reversed(range(len(outputs))):
        if outputs[i].name in stored:
            del outputs[i]


def _count_pool_writers(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.domain == OP_DOMAIN and n.op_type == KV_APPEND.name
               and any(a.name == "write_pool" and a.i == 1 for a in n.attribute))


def _load_model(model_dir: Path, manifest: Manifest, *, native_kv_write: bool = False,
                bf16_matmul: bool = False) -> onnx.ModelProto:
    """The exported graph, ready for this backend (``native_kv_write``: the native KVAppend
    kernels write the pool, attribute ``write_pool``; ``bf16_matmul``: the linear layers as
    trtkv.cpu::MatMulBf16, `cpu_matmul`)."""
    path = model_dir / manifest.onnx_file
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise ModelDirError(f"cannot read {path} ({exc}); re-export the model") from exc
    _check_graph_matches(model, manifest, path)
    if bf16_matmul:
        rewrite_matmuls(model)  # before the float32 rewrite below: these weights stay bf16
    if manifest.dtype == "bf16":
        _bf16_to_fp32_compute(model)
    set_kv_format(model, manifest)
    if native_kv_write:
        for node in model.graph.node:
            if node.domain == OP_DOMAIN and node.op_type == KV_APPEND.name:
                node.attribute.append(helper.make_attribute("write_pool", 1))
    return model


def _check_graph_matches(model: onnx.ModelProto, manifest: Manifest, path: Path) -> None:
    """The manifest and the graph describe the same model (a hand-edited or mismatched
    manifest fails here with one line, not inside ONNX Runtime or as wrong output).

    Raises:
        ModelDirError: the number of KV inputs, their heads/head_dim or the vocabulary differ.
    """
    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    pools = kv_graph_values(model.graph)[0]
    found: list[str] = []
    if len(pools) != manifest.num_layers:
        found.append(f"num_layers {manifest.num_layers} vs {len(pools)} kv_cache inputs")
    for value in pools[:1]:
        shape = dims(value)
        if len(shape) == 5 and shape[3] != manifest.num_kv_heads:
            found.append(f"num_kv_heads {manifest.num_kv_heads} vs {shape[3]}")
        if len(shape) == 5 and shape[4] not in (manifest.head_dim, manifest.pool_head_dim):
            found.append(f"head_dim {manifest.head_dim} vs {shape[4]}")
    logits = [v for v in model.graph.output if v.name == LOGITS_OUTPUT]
    if logits and isinstance(dims(logits[0])[-1], int) and dims(logits[0])[-1] != manifest.vocab_size:
        found.append(f"vocab_size {manifest.vocab_size} vs {dims(logits[0])[-1]} logits")
    if found:
        raise ModelDirError(f"manifest.json disagrees with {path.name} ({'; '.join(found)}); re-export the model")


def set_kv_format(model: onnx.ModelProto, manifest: Manifest) -> None:
    """Give the graph this backend's KV pool: dtype, op bodies and the manifest's scales.

    The KV dtype of the pool can differ from the export's here (the op bodies are local
    functions specialised per dtype); fp8 pools are bound as uint8 codes.
    """
    kv = manifest.kv_dtype
    pool_type = TensorProto.UINT8 if kv == "fp8" else KV_ONNX_TYPES[kv]
    pools, stored = kv_graph_values(model.graph)
    for value in pools:
        value.type.tensor_type.elem_type = pool_type
    for value in stored:
        value.type.tensor_type.elem_type = KV_ONNX_TYPES[kv]
    set_kv_width(model.graph, manifest.pool_head_dim)
    del model.functions[:]
    model.functions.extend(op_functions(kv, fp8_pool_as_uint8=True, dynamic=manifest.dynamic_kv_scales))
    scales = {f"k_scale.{i}": s for i, s in enumerate(manifest.k_scales)}
    scales.update({f"v_scale.{i}": s for i, s in enumerate(manifest.v_scales)})
    for init in model.graph.initializer:
        if init.name in scales:
            init.CopyFrom(numpy_helper.from_array(np.asarray(scales[init.name], np.float32), init.name))


def _bf16_to_fp32_compute(model: onnx.ModelProto) -> None:
    """Rewrite the main graph's bf16 compute to float32 (the pool, op bodies and the packed
    weights of trtkv.cpu::MatMulBf16 keep bf16)."""
    graph = model.graph
    packed = {n.input[1] for n in graph.node if n.domain == CPU_DOMAIN}
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.BFLOAT16 and init.name not in packed:
            bits = np.frombuffer(init.raw_data, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32).reshape(tuple(init.dims))
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.BFLOAT16:
                attr.i = TensorProto.FLOAT
