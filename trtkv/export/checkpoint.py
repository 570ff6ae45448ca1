"""Reading a Hugging Face checkpoint directory: config, architecture adapter, weights.

Owns every check of the input directory, so bad checkpoints fail here with a message that
says what is wrong and what is supported. Uses transformers' own config loading (no torch
needed) and reads safetensors weights (single file or sharded with
``model.safetensors.index.json``) into NumPy. Must not import torch.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from trtkv.errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class ArchSpec:
    """What the Llama-family graph needs to know about one checkpoint (its adapter)."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_windows: tuple[int, ...]
    rope: dict[str, Any]
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None


def read_config_json(cfg_path: Path) -> dict[str, Any]:
    """A config.json as a dict, or a CheckpointError saying why it is not one."""
    try:
        raw = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(raw).__name__}, not an object; pass a Hugging Face config.json")
    return raw


def load_hf_config(hf_dir: Path) -> Any:
    """transformers' config for ``hf_dir``, or a CheckpointError that says what is wrong."""
    if not hf_dir.exists():
        raise CheckpointError(f"checkpoint directory {hf_dir} does not exist")
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir} is not a directory; pass a Hugging Face checkpoint directory")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{hf_dir} has no config.json; pass a Hugging Face checkpoint directory "
            "(config.json + *.safetensors + tokenizer files)"
        )
    raw = read_config_json(cfg_path)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in {cfg_path}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    _check_required_fields(raw, cfg_path)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(hf_dir))
    except Exception as exc:  # transformers raises many types for bad configs
        raise CheckpointError(f"cannot read {cfg_path}: {exc}") from exc


#: Fields every supported config.json must give itself: transformers would fill them with its
#: class defaults (e.g. hidden_size 4096, vocab_size 32000), exporting a model that is not this one.
REQUIRED_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                          "vocab_size", "max_position_embeddings")


def _check_required_fields(raw: dict[str, Any], cfg_path: Path) -> None:
    missing = [name for name in REQUIRED_CONFIG_FIELDS if name not in raw]
    if missing:
        raise CheckpointError(f"{cfg_path} lacks {', '.join(missing)}; a {raw.get('model_type')} config.json "
                              "must give them (trtkv does not guess model dimensions)")
    for name in (*REQUIRED_CONFIG_FIELDS, "num_key_value_heads", "head_dim"):
        value = raw.get(name)
        if value is None and name in ("num_key_value_heads", "head_dim"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{cfg_path}: {name} must be a positive integer, got {value!r}")


def arch_spec_from_config(config: Any, hf_dir: Path) -> ArchSpec:
    """The adapter: map an HF config of a supported family onto `ArchSpec`."""
    mt = config.model_type
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    if num_heads % num_kv_heads:
        raise CheckpointError(f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}")
    rope = _rope_settings(config)
    window = getattr(config, "sliding_window", None) or 0
    layer_types = getattr(config, "layer_types", None)
    if mt == "mistral":
        windows = tuple(window for _ in range(config.num_hidden_layers))
    elif layer_types:
        windows = tuple(window if t == "sliding_attention" else 0 for t in layer_types)
    else:
        use = getattr(config, "use_sliding_window", False)
        windows = tuple(window if use else 0 for _ in range(config.num_hidden_layers))
    return ArchSpec(
        model_type=mt,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=float(config.rms_norm_eps),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        attention_bias=mt == "qwen2" or bool(getattr(config, "attention_bias", False)),
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=mt == "qwen3",
        sliding_windows=windows,
        rope=rope,
        eos_token_ids=_eos_ids(config, hf_dir),
        bos_token_id=getattr(config, "bos_token_id", None),
    )


def _rope_settings(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise CheckpointError(
            f"rope type {rope_type!r} is not supported (position-dependent scaling); supported: "
            f"{', '.join(_SUPPORTED_ROPE_TYPES)}"
        )
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return {"rope_type": rope_type, "rope_theta": float(theta), "parameters": _jsonable(params)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _eos_ids(config: Any, hf_dir: Path) -> tuple[int, ...]:
    ids: list[int] = []
    gen_path = hf_dir / "generation_config.json"
    sources: list[Any] = [getattr(config, "eos_token_id", None)]
    if gen_path.is_file():
        try:
            sources.insert(0, json.loads(gen_path.read_text()).get("eos_token_id"))
        except ValueError as exc:
            raise CheckpointError(f"{gen_path} is not valid JSON ({exc})") from exc
    for src in sources:
        for i in src if isinstance(src, list) else [src]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


#: safetensors dtype names -> NumPy dtypes (bf16 and fp8 through ml_dtypes).
_SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclass(frozen=True)
class _TensorEntry:
    """Where one tensor's bytes lie in a safetensors file."""

    file: BinaryIO
    dtype: Any
    shape: tuple[int, ...]
    start: int
    num_bytes: int


def _read_safetensors_header(path: Path, handle: BinaryIO) -> dict[str, _TensorEntry]:
    """The tensors of one safetensors file (8-byte header length, JSON header, data), checked
    against the file's size so a truncated file fails here, not halfway through an export."""
    size = path.stat().st_size
    raw_len = handle.read(8)
    if len(raw_len) < 8:
        raise ValueError("shorter than a safetensors header")
    header_len = struct.unpack("<Q", raw_len)[0]
    if header_len > size - 8:
        raise ValueError(f"header of {header_len} bytes in a file of {size}")
    header = json.loads(handle.read(header_len))
    data_start = 8 + header_len
    entries: dict[str, _TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if end - begin != dtype.itemsize * math.prod(shape):
            raise ValueError(f"tensor {name!r}: {end - begin} bytes for shape {list(shape)}")
        if data_start + end > size:
            raise ValueError(f"tensor {name!r} ends at byte {data_start + end}, past the file's {size}")
        entries[name] = _TensorEntry(handle, dtype, shape, data_start + begin, end - begin)
    return entries


class WeightReader:
    """Named tensors of a checkpoint, read lazily from one or many safetensors files.

    Use as a context manager; ``get(name)`` returns a NumPy array in the checkpoint's dtype
    (bf16 as ``ml_dtypes.bfloat16``). Reads the format directly: safetensors' own NumPy
    loader has no bf16, and export must not need torch.
    """

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = hf_dir
        self._stack = ExitStack()
        self._where: dict[str, _TensorEntry] = {}

    def __enter__(self) -> WeightReader:
        index = self.hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index} is corrupt ({exc})") from exc
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.hf_dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"{self.hf_dir} has no *.safetensors weights (only safetensors checkpoints are "
                "supported; convert .bin checkpoints with `save_pretrained(safe_serialization=True)`)"
            )
        for name in files:
            path = self.hf_dir / name
            if not path.is_file():
                raise CheckpointError(f"shard {name} listed in the index is missing from {self.hf_dir}")
            try:
                handle = self._stack.enter_context(path.open("rb"))
                self._where.update(_read_safetensors_header(path, handle))
            except Exception as exc:
                raise CheckpointError(
                    f"{path} is corrupt or truncated ({exc}); re-download or re-save the checkpoint"
                ) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        """The tensor ``name``, shape as stored, dtype as stored.

        Raises:
            CheckpointError: the weight is missing or its bytes cannot be read.
        """
        if name not in self._where:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint in {self.hf_dir}")
        entry = self._where[name]
        try:
            entry.file.seek(entry.start)
            data = entry.file.read(entry.num_bytes)
            if len(data) != entry.num_bytes:
                raise ValueError(f"read {len(data)} of {entry.num_bytes} bytes")
            return np.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)
        except Exception as exc:
            raise CheckpointError(f"cannot read weight {name!r} ({exc}); the checkpoint is corrupt") from exc

    def names(self) -> Iterator[str]:
        return iter(self._where)
