"""`trtkv export MODEL -o DIR`: a checkpoint -> ONNX with trtkv ops + manifest."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trtkv.cli import app
from trtkv.cli._options import command
from trtkv.export.config import ExportConfig


@command(app, "export", help="HF checkpoint / hub id / .gguf -> ONNX with trtkv ops + manifest",
         rich_help_panel="Models")
def export(
    model: Annotated[str, typer.Argument(metavar="CHECKPOINT", show_default=False, help=(
        "Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer), hub id in "
        "the local HF cache (ORG/NAME) or .gguf file"))],
    output: Annotated[str, typer.Option("-o", "--output", show_default=False,
                                        help="output directory (written atomically)")],
    config: ExportConfig,
) -> None:
    from trtkv.model_source import export_model

    manifest = export_model(model, output, config)
    weights = f", {manifest.weights} weights" if manifest.weights != "none" else ""
    if manifest.weight_calibration:
        c = manifest.weight_calibration
        weights += f" ({c['algorithm']} on {c['num_samples']} prompts, {c['num_tokens']} tokens of {c['source']})"
    print(f"exported {manifest.architecture} ({manifest.num_layers} layers, {manifest.dtype}{weights}, "
          f"KV {manifest.kv_dtype}) to {output}", file=sys.stderr)
