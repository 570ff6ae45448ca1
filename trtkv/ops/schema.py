"""The trtkv op contract: names, versions, input order, shapes, dtypes, attributes, KV layout.

This module is the single source of truth shared by the exporter (which emits the nodes), the
ONNX Runtime function bodies (`trtkv.ops.onnx_functions`), the reference implementations
(`trtkv.ops.reference`), the CUDA kernels / TensorRT plugins (`plugins/`, whose tables are
tested against this file) and the runtime (which feeds the inputs).

It must not import torch, onnx or tensorrt.

Symbols used in shapes:
    T  number of new tokens in the step (a packed batch of prefill chunks and decode tokens)
    S  number of sequences in the step
    H  number of query heads, Hkv number of KV heads (H % Hkv == 0; GQA/MQA)
    D  head dimension (any positive size, e.g. 48, 64, 80, 128)
    N  number of blocks in the KV pool, B block size (tokens per block)
    M  width of the block table (max blocks per sequence in this step)

KV pool layout (one tensor per layer, the same block id addresses that block in every layer):
    kv_cache[N, 2, B, Hkv, D]; [:, 0] holds K and [:, 1] holds V. Token slot ``s`` lives at
    block ``s // B``, offset ``s % B``. A block of one layer (K and V) is contiguous, so moving
    a block between tiers is one contiguous copy per layer.

Quantized pools (fp8 E4M3, int8) store ``q = quantize(x / scale)`` and read ``x = q * scale``.
``k_scale``/``v_scale`` are float32 of shape [1] (per tensor) or [Hkv] (per KV head).
Rounding is round-to-nearest-even; fp8 E4M3 saturates to +-448, int8 clamps to +-127
(symmetric, -128 never produced). For fp32/fp16/bf16 pools the scales must be 1.
"""

from __future__ import annotations

from dataclasses import dataclass

OP_DOMAIN = "trtkv"
OP_SET_VERSION = 1
PLUGIN_NAMESPACE = "trtkv"

KV_LAYOUT = "NTBHD"  # [num_blocks, 2 (K,V), block_size, num_kv_heads, head_dim]

FP8_E4M3_MAX = 448.0
INT8_MAX = 127.0


@dataclass(frozen=True)
class KVDtype:
    """One KV pool dtype: every table of the package about it is derived from this record.

    Attributes:
        name: the name on the command line and in the manifest.
        itemsize: bytes per stored element.
        numpy: numpy / ml_dtypes storage dtype name.
        torch: torch dtype attribute name.
        onnx: ONNX ``TensorProto`` element type of the pool.
        qmax: largest code magnitude for quantized dtypes (codes = x / scale), else None.
        default_scale: scale when none was calibrated (quantized dtypes), else 1.
    """

    name: str
    itemsize: int
    numpy: str
    torch: str
    onnx: int
    qmax: float | None = None
    default_scale: float = 1.0

    @property
    def quantized(self) -> bool:
        return self.qmax is not None

    @property
    def code_max(self) -> float:
        """``qmax`` of a quantized dtype.

        Raises:
            ValueError: not a quantized dtype.
        """
        if self.qmax is None:
            raise ValueError(f"{self.name} is not a quantized KV dtype (use one of fp8, int8)")
        return self.qmax


#: The KV dtype registry (ONNX element types as TensorProto's numbers: this module must not
#: import onnx). Default scales when a quantized pool has no calibrated scales: fp8 keeps E4M3's
#: own range (+-448, relative precision 2^-3); int8 gets steps of 1/16 (range +-7.94), a guess
#: that suits normalized keys/values only -- calibrate (`trtkv export --calibrate N`) for int8.
KV_DTYPE_SPECS: dict[str, KVDtype] = {d.name: d for d in (
    KVDtype("fp32", 4, "float32", "float32", onnx=1),
    KVDtype("fp16", 2, "float16", "float16", onnx=10),
    KVDtype("bf16", 2, "bfloat16", "bfloat16", onnx=16),
    KVDtype("fp8", 1, "float8_e4m3fn", "float8_e4m3fn", onnx=17, qmax=FP8_E4M3_MAX, default_scale=1.0),
    KVDtype("int8", 1, "int8", "int8", onnx=3, qmax=INT8_MAX, default_scale=1.0 / 16.0),
)}
#: KV pool dtypes, by the names used on the command line and in the manifest.
KV_DTYPES = tuple(KV_DTYPE_SPECS)
#: KV dtypes stored as quantized codes with scales.
QUANTIZED_KV_DTYPES = tuple(n for n, d in KV_DTYPE_SPECS.items() if d.quantized)
#: Other spellings users bring from vLLM / PyTorch / TensorRT-LLM, mapped to ours.
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
                 "fp8_e4m3": "fp8", "float8_e4m3fn": "fp8", "e4m3": "fp8"}


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative ints: e.g. the blocks that hold ``a`` tokens at block size ``b``."""
    return -(-a // b)


def canonical_dtype(name: str) -> str:
    """Our name of a dtype given in any usual spelling (unknown names come back unchanged)."""
    return DTYPE_ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
#: Scale used when a quantized pool has no calibrated scales (see `KV_DTYPE_SPECS`).
DEFAULT_KV_SCALES = {n: KV_DTYPE_SPECS[n].default_scale for n in QUANTIZED_KV_DTYPES}

#: How a quantized pool's scales are chosen: ``static`` (per layer / KV head, from the manifest:
#: calibrated or the defaults) or ``dynamic`` (per token and KV head, computed on write).
KV_SCALE_MODES = ("static", "dynamic")
#: KV dtypes with a dynamic-scale layout (int8; fp8 has no bit-exact encode in standard ONNX ops).
DYNAMIC_SCALE_KV_DTYPES = ("int8",)
#: Dynamic scales: every (token, KV head) row of D values is cut into G groups of
#: DYNAMIC_GROUP_SIZE consecutive values (one group when D is not a multiple); each group has
#: the exponent e of its scale ``2 ** (e / DYNAMIC_SCALE_STEPS)``, the smallest such power at
#: or above the group's amax / 127 (a group of zeros: e = -128). A row is stored as its D int8
#: codes then its G exponents (int8): the pool's last dimension is ``head_dim + G``, so the
#: scales travel with their block through every copy, swap and tier.
DYNAMIC_SCALE_STEPS = 8
DYNAMIC_GROUP_SIZE = 32
DYNAMIC_EXPONENT_MIN, DYNAMIC_EXPONENT_MAX = -128, 127


def dynamic_scale_groups(head_dim: int) -> int:
    """Scales per (token, KV head) row with dynamic scales (see `DYNAMIC_GROUP_SIZE`)."""
    return head_dim // DYNAMIC_GROUP_SIZE if head_dim % DYNAMIC_GROUP_SIZE == 0 else 1


def kv_dtype_spec(name: str) -> KVDtype:
    """The registry entry of a KV dtype (any usual spelling).

    Raises:
        KeyError: not a KV dtype.
    """
    return KV_DTYPE_SPECS[canonical_dtype(name)]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an op."""

    name: str
    shape: tuple[str, ...]
    dtypes: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of an op (ONNX attribute and TensorRT plugin field)."""

    name: str
    type: str  # "int" | "float" | "string"
    default: int | float | str
    doc: str


@dataclass(frozen=True)
class OpSchema:
    """A trtkv op: the ONNX node `domain::name` and the TensorRT plugin `namespace::name`."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttrSpec, ...]
    doc: str

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)


_COMPUTE = ("float32", "float16", "bfloat16")
_POOL = ("float32", "float16", "bfloat16", "float8e4m3fn", "int8")

_SCALES = (
    TensorSpec("k_scale", ("Ks",), ("float32",), "K dequant scale, [1] or [Hkv]; 1 if not quantized"),
    TensorSpec("v_scale", ("Vs",), ("float32",), "V dequant scale, [1] or [Hkv]; 1 if not quantized"),
)

KV_APPEND = OpSchema(
    name="KVAppend",
    version=1,
    inputs=(
        TensorSpec("key", ("T", "Hkv", "D"), _COMPUTE, "new tokens' keys (after RoPE)"),
        TensorSpec("value", ("T", "Hkv", "D"), _COMPUTE, "new tokens' values"),
        TensorSpec("slot_mapping", ("T",), ("int64",), "pool slot of each new token; <0 = skip"),
        TensorSpec("kv_cache", ("N", "2", "B", "Hkv", "D"), _POOL, "the layer's pool (read only: the runtime writes the stored codes)"),
        *_SCALES,
    ),
    outputs=(
        TensorSpec("key_stored", ("T", "Hkv", "D"), _POOL, "keys as stored in the pool"),
        TensorSpec("value_stored", ("T", "Hkv", "D"), _POOL, "values as stored in the pool"),
    ),
    attributes=(),
    doc=(
        "Quantizes the step's K/V for the pool (quantize-on-write) and outputs the stored codes. "
        "No backend writes the pool inside the graph or engine (an engine input is read only, "
        "and TensorRT may copy or reformat inputs): the runtime copies the codes into the pool "
        "at slot_mapping after the step, in O(T), on every backend."
    ),
)

PAGED_ATTENTION = OpSchema(
    name="PagedAttention",
    version=1,
    inputs=(
        TensorSpec("query", ("T", "H", "D"), _COMPUTE, "new tokens' queries (after RoPE)"),
        TensorSpec("key", ("T", "Hkv", "D"), _POOL, "new tokens' keys as stored (KVAppend output)"),
        TensorSpec("value", ("T", "Hkv", "D"), _POOL, "new tokens' values as stored"),
        TensorSpec("kv_cache", ("N", "2", "B", "Hkv", "D"), _POOL, "the layer's pool (history)"),
        TensorSpec("query_start_loc", ("S+1",), ("int32",), "cumulative new-token offsets"),
        TensorSpec("context_lens", ("S",), ("int32",), "tokens already in the pool per sequence"),
        TensorSpec("block_tables", ("S", "M"), ("int32",), "block ids per sequence, padded"),
        *_SCALES,
    ),
    outputs=(TensorSpec("output", ("T", "H", "D"), _COMPUTE, "attention output per new token"),),
    attributes=(
        AttrSpec("scale", "float", 0.0, "softmax scale; 0 means 1/sqrt(D)"),
        AttrSpec("sliding_window", "int", 0, "attend to the last W positions only; 0 = unlimited"),
        AttrSpec("softcap", "float", 0.0, "logit soft-cap c: c*tanh(s/c); 0 = off"),
    ),
    doc=(
        "Causal attention of each sequence's new tokens (positions context_len .. "
        "context_len+n-1) over its history in the pool (positions 0 .. context_len-1, read "
        "through block_tables) and its own new tokens. Sequences in one step may mix prefill "
        "chunks and single decode tokens. GQA/MQA: query head h reads KV head h // (H/Hkv). "
        "Accumulation is float32 whatever the compute dtype."
    ),
)

OPS: dict[str, OpSchema] = {op.name: op for op in (KV_APPEND, PAGED_ATTENTION)}

#: Attributes every trtkv node carries so the TensorRT ONNX parser maps it to the plugin
#: rather than inlining the same-named local function used by ONNX Runtime.
PLUGIN_NODE_ATTRIBUTES = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": "1"}
