"""The manifest: what an exported model directory is, shared by export, build and runtime.

Written by `trtkv export` as `manifest.json` beside `model.onnx`; read by the backends and the
engine. Values discovered at export time (architecture, heads, rope, eos ids, KV scales) live
here, never back in a config object.

Must not import torch, onnx or tensorrt.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from trtkv.errors import ModelDirError
from trtkv.ops.schema import (
    DEFAULT_KV_SCALES,
    DYNAMIC_SCALE_KV_DTYPES,
    KV_DTYPE_SPECS,
    KV_DTYPES,
    KV_LAYOUT,
    KV_SCALE_MODES,
    OP_DOMAIN,
    OP_SET_VERSION,
    OPS,
    dynamic_scale_groups,
)

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1
#: Revision of the graph `trtkv export` emits (same format, different nodes): part of the
#: export cache key (`trtkv.model_source`), so an on-the-fly export is redone when it changes.
#: 2: RMSNorm through Pow, which ONNX Runtime fuses into one SimplifiedLayerNormalization.
#: 3: rotary embedding as Gather (the halves swapped) times a signed sin table: no Slice/Neg/Concat.
GRAPH_REVISION = 3

#: Graph input / output names shared by the exporter and every backend.
INPUT_NAMES = (
    "input_ids", "positions", "query_start_loc", "context_lens", "block_tables",
    "slot_mapping", "logits_indices",
)
KV_CACHE_INPUT = "kv_cache.{layer}"
LOGITS_OUTPUT = "logits"
KEY_STORED_OUTPUT = "key_stored.{layer}"
VALUE_STORED_OUTPUT = "value_stored.{layer}"


def kv_graph_values(graph: Any) -> tuple[list[Any], list[Any]]:
    """The per-layer KV values of an ONNX graph: (the kv_cache inputs, the key/value_stored
    outputs), as ValueInfoProtos (no onnx import here)."""
    stored = (KEY_STORED_OUTPUT.split("{", 1)[0], VALUE_STORED_OUTPUT.split("{", 1)[0])
    pools = [v for v in graph.input if v.name.startswith(KV_CACHE_INPUT.split("{", 1)[0])]
    return pools, [v for v in graph.output if v.name.startswith(stored)]


def set_kv_width(graph: Any, width: int) -> None:
    """The last dimension of the pools and the stored codes: head_dim, or head_dim + the
    exponent bytes of dynamic int8 scales (`Manifest.pool_head_dim`; an exported file declares
    head_dim)."""
    pools, stored = kv_graph_values(graph)
    for value in (*pools, *stored):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[-1].dim_value = width


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about an exported model.

    Attributes:
        architecture: HF ``model_type`` (llama, mistral, qwen2, qwen3).
        num_layers, hidden_size, num_heads, num_kv_heads, head_dim, vocab_size: model dims.
        max_position_embeddings: the longest sequence the model supports.
        dtype: weight/compute dtype of the graph (fp32, fp16, bf16).
        kv_dtype: dtype of the KV pool (fp32, fp16, bf16, fp8, int8).
        k_scales, v_scales: per layer, the KV dequant scales ([1] or [Hkv] floats).
        block_size: default tokens per KV block for this export.
        sliding_windows: per layer window (0 = full attention).
        eos_token_ids, bos_token_id: from generation_config.json / config.json.
        rope: rope settings as read (theta, scaling dict) — informational.
    """

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    dtype: str
    kv_dtype: str
    k_scales: tuple[tuple[float, ...], ...]
    v_scales: tuple[tuple[float, ...], ...]
    block_size: int
    sliding_windows: tuple[int, ...]
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    rope: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    onnx_file: str = ONNX_FILE
    kv_layout: str = KV_LAYOUT
    op_domain: str = OP_DOMAIN
    op_set_version: int = OP_SET_VERSION
    op_versions: dict[str, int] = field(default_factory=lambda: {n: s.version for n, s in OPS.items()})
    format_version: int = FORMAT_VERSION
    source: str = ""
    kv_calibration: dict[str, Any] = field(default_factory=dict)
    """How the fp8/int8 scales were calibrated (source, samples, tokens, granularity,
    saturation at the default scales); empty when they were not."""
    kv_scale_mode: str = "static"
    """``static``: ``k_scales`` / ``v_scales`` per layer (calibrated or defaults); ``dynamic``:
    a scale per token, KV head and group of 32 values, stored beside the codes (int8; pool rows
    of head_dim + head_dim / 32)."""
    weights: str = "none"
    """Weight-only quantization of the linear layers (none, int8, int4: MatMulNBits)."""
    weight_group_size: int = 0
    """Inputs per weight scale with ``weights`` quantized (0: none)."""
    weight_calibration: dict[str, Any] = field(default_factory=dict)
    """How ``--weight-algo gptq`` was calibrated (algorithm, source, samples, tokens, seconds);
    empty for the calibration-free algorithms."""

    def _type_problem(self) -> str:
        """What is wrong with the field types or ranges ('' if nothing): a hand-edited manifest
        must fail here, not as a wrong answer (``eos_token_ids: "1"``) or a crash later."""
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                     "max_position_embeddings", "block_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                return f"{name} must be a positive integer, got {value!r}"
        if self.num_heads % self.num_kv_heads:
            return f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
        if not all(is_int(t) and 0 <= t < self.vocab_size for t in self.eos_token_ids):
            return f"eos_token_ids must be a list of token ids below vocab_size, got {list(self.eos_token_ids)!r}"
        if self.bos_token_id is not None and not is_int(self.bos_token_id):
            return f"bos_token_id must be an integer or null, got {self.bos_token_id!r}"
        for name in ("sliding_windows", "k_scales", "v_scales"):
            if len(getattr(self, name)) != self.num_layers:
                return f"{name} has {len(getattr(self, name))} entries for {self.num_layers} layers"
        if self.kv_scale_mode not in KV_SCALE_MODES:
            return f"kv_scale_mode must be one of {', '.join(KV_SCALE_MODES)}, got {self.kv_scale_mode!r}"
        if self.dynamic_kv_scales and self.kv_dtype not in DYNAMIC_SCALE_KV_DTYPES:
            return f"kv_scale_mode dynamic needs a {'/'.join(DYNAMIC_SCALE_KV_DTYPES)} KV pool, not {self.kv_dtype}"
        if not all(is_int(w) and w >= 0 for w in self.sliding_windows):
            return f"sliding_windows must be integers >= 0, got {list(self.sliding_windows)!r}"
        for name in ("k_scales", "v_scales"):
            for scales in getattr(self, name):
                if len(scales) not in (1, self.num_kv_heads) or not all(
                        isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in scales):
                    return f"{name} entries must be 1 or num_kv_heads positive numbers, got {list(scales)!r}"
        return ""

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV storage per token over all layers (dynamic scales included)."""
        elem = KV_DTYPE_SPECS[self.kv_dtype].itemsize
        return 2 * self.num_layers * self.num_kv_heads * self.pool_head_dim * elem

    @property
    def pool_head_dim(self) -> int:
        """The pool's last dimension: head_dim, plus one exponent byte per group of
        `DYNAMIC_GROUP_SIZE` values with dynamic scales."""
        return self.head_dim + (dynamic_scale_groups(self.head_dim) if self.dynamic_kv_scales else 0)

    @property
    def dynamic_kv_scales(self) -> bool:
        return self.kv_scale_mode == "dynamic"

    @property
    def has_calibrated_kv_scales(self) -> bool:
        """Whether a quantized pool's scales were measured (`trtkv calibrate`), not the
        documented defaults (which saturate on many real models)."""
        default = (DEFAULT_KV_SCALES.get(self.kv_dtype, 1.0),)
        return self.dynamic_kv_scales or any(s != default for s in (*self.k_scales, *self.v_scales))

    def with_scale_mode(self, mode: str) -> Manifest:
        """This manifest with static or dynamic KV scales.

        Raises:
            ConfigError: dynamic scales for a KV dtype that has no such layout.
        """
        if mode == self.kv_scale_mode:
            return self
        if mode == "dynamic" and self.kv_dtype not in DYNAMIC_SCALE_KV_DTYPES:
            from trtkv.errors import ConfigError

            raise ConfigError(f"dynamic KV scales are for {', '.join(DYNAMIC_SCALE_KV_DTYPES)} pools, not "
                              f"{self.kv_dtype}: add --kv-dtype int8, or calibrate static scales")
        return replace(self, kv_scale_mode=mode)

    def with_kv(self, kv_dtype: str, scales: tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]] | None = None) -> Manifest:
        """This manifest with another KV dtype (default scales when switching dtype; static
        scales unless the new dtype has a dynamic layout too)."""
        if kv_dtype == self.kv_dtype and scales is None:
            return self
        mode = self.kv_scale_mode if kv_dtype in DYNAMIC_SCALE_KV_DTYPES else "static"
        if scales is None:
            s = (DEFAULT_KV_SCALES.get(kv_dtype, 1.0),)
            scales = (tuple(s for _ in range(self.num_layers)), tuple(s for _ in range(self.num_layers)))
        return replace(self, kv_dtype=kv_dtype, k_scales=scales[0], v_scales=scales[1], kv_calibration={},
                       kv_scale_mode=mode)

    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path, *, require_onnx: bool = True) -> Manifest:
        """Read and validate ``model_dir/manifest.json``.

        Raises:
            ModelDirError: the directory or manifest is missing, unreadable or inconsistent.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelDirError(
                f"model directory {model_dir} does not exist; create one with "
                "`trtkv export HF_DIR -o OUT_DIR`"
            )
        path = model_dir / MANIFEST_FILE
        if not path.is_file():
            raise ModelDirError(
                f"{model_dir} has no {MANIFEST_FILE}: it is not an exported trtkv model; "
                "run `trtkv export HF_DIR -o OUT_DIR` and pass OUT_DIR"
            )
        try:
            raw = json.loads(path.read_text())
            raw["k_scales"] = tuple(tuple(s) for s in raw["k_scales"])
            raw["v_scales"] = tuple(tuple(s) for s in raw["v_scales"])
            for key in ("sliding_windows", "eos_token_ids"):
                raw[key] = tuple(raw[key])
            manifest = cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelDirError(f"{path} is corrupt ({exc}); re-export the model") from exc
        problem = manifest._type_problem()
        if problem:
            raise ModelDirError(f"{path} is corrupt ({problem}); re-export the model")
        if manifest.format_version != FORMAT_VERSION:
            raise ModelDirError(
                f"{path} has format_version {manifest.format_version}, this trtkv reads "
                f"{FORMAT_VERSION}; re-export the model with this version"
            )
        if manifest.kv_dtype not in KV_DTYPES:
            raise ModelDirError(f"{path}: unknown kv_dtype {manifest.kv_dtype!r}")
        if require_onnx and not (model_dir / manifest.onnx_file).is_file():
            raise ModelDirError(f"{model_dir} has no {manifest.onnx_file}; re-export the model")
        return manifest
