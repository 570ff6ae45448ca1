"""`trtkv build MODEL_DIR -o engines/NAME`: an export -> TensorRT engine directory."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trtkv.build.config import BuildConfig
from trtkv.cli import app
from trtkv.cli._args import ExportDir
from trtkv.cli._options import command


@command(app, "build", help="exported model -> TensorRT engine directory (TensorRT, or TensorRT "
         "for RTX on any machine)", rich_help_panel="Models")
def build(
    onnx_dir: ExportDir,
    output: Annotated[str, typer.Option("-o", "--output", show_default=False,
                                        help="engine directory, e.g. engines/NAME")],
    config: BuildConfig,
) -> None:
    from trtkv.build.engine_builder import build_engine

    out = build_engine(onnx_dir, output, config)
    print(f"built TensorRT engine in {out}", file=sys.stderr)
