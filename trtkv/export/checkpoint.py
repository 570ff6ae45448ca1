"""Reading a Hugging Face checkpoint directory: config, architecture adapter, weights.

Owns every check of the input directory, so bad checkpoints fail here with a message that
says what is wrong and what is supported. Uses transformers' own config loading and the
safetensors library (single file or sharded with ``model.safetensors.index.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except ValueError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in {cfg_path}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(hf_dir))
    except Exception as exc:  # transformers raises many types for bad configs
        raise CheckpointError(f"cannot read {cfg_path}: {exc}") from exc


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


class WeightReader:
    """Named tensors of a checkpoint, read lazily from one or many safetensors files.

    Use as a context manager; ``get(name)`` returns a torch tensor.
    """

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = hf_dir
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}

    def __enter__(self) -> WeightReader:
        from safetensors import safe_open

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
                handle = self._stack.enter_context(safe_open(str(path), framework="pt"))
                keys = list(handle.keys())
            except Exception as exc:
                raise CheckpointError(
                    f"{path} is corrupt or truncated ({exc}); re-download or re-save the checkpoint"
                ) from exc
            for key in keys:
                self._where[key] = handle
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def has(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Any:
        if name not in self._where:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint in {self.hf_dir}")
        try:
            return self._where[name].get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"cannot read weight {name!r} ({exc}); the checkpoint is corrupt") from exc

    def names(self) -> Iterator[str]:
        return iter(self._where)
