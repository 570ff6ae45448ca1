"""Built-in checkpoints shipped with trtkv, and the held-out text they are measured on.

``tiny-stdlib`` is a small Llama trained on the Python standard library's own source by
``scripts/train_tiny_model.py`` (see its README.md). Its held-out files are read back from the
running interpreter's stdlib, so perplexity can be measured without shipping any text.

This module owns only paths and text; it must not import torch, onnx or tensorrt.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from trtkv.errors import CheckpointError

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parent / "tiny-stdlib"
"""The default model: a Hugging Face checkpoint directory (config, safetensors, tokenizer)."""

HELDOUT_FILES_NAME = "heldout_files.json"


def heldout_files(model_dir: Path = DEFAULT_MODEL_DIR) -> list[str]:
    """Stdlib-relative paths of the files the model never saw in training, in order.

    Raises:
        CheckpointError: the model directory has no readable ``heldout_files.json``.
    """
    path = model_dir / HELDOUT_FILES_NAME
    try:
        files = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}. Reinstall trtkv or rerun scripts/train_tiny_model.py."
        ) from exc
    return [str(f) for f in files]


def heldout_text(max_chars: int | None = None, model_dir: Path = DEFAULT_MODEL_DIR) -> str:
    """The held-out stdlib sources, concatenated in list order with a blank line between files.

    Args:
        max_chars: keep only the first ``max_chars`` characters (``None``: everything).
        model_dir: checkpoint directory holding ``heldout_files.json``.

    Returns:
        Text read from the running interpreter's stdlib; identical across runs of one Python.

    Raises:
        CheckpointError: the list is missing, or a listed file is absent from this stdlib.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    num_chars = 0
    for rel in heldout_files(model_dir):
        path = stdlib / rel
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise CheckpointError(
                f"held-out file {rel} is missing from {stdlib} ({exc}); measure on a full "
                "CPython 3.11+ install, not one with a stripped standard library."
            ) from exc
        parts.append(text)
        num_chars += len(text) + 2
        if max_chars is not None and num_chars >= max_chars:
            break
    joined = "\n\n".join(parts)
    return joined if max_chars is None else joined[:max_chars]
