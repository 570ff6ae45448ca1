"""`trtkv triton-repo MODEL_DIR -o REPO`: a Triton Inference Server model repository."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trtkv.cli import app
from trtkv.cli._args import ExportDir
from trtkv.cli._options import command
from trtkv.runtime.config import EngineConfig


@command(app, "triton-repo", help="write a Triton Inference Server model repository (Python "
         "backend, decoupled streaming)", rich_help_panel="Serve")
def triton_repo(
    model_dir: ExportDir,
    output: Annotated[str, typer.Option("-o", "--output", show_default=False,
                                        help="repository directory to write")],
    engine: EngineConfig,
    model_name: Annotated[str, typer.Option(help="model name inside the repository")] = "trtkv",
) -> None:
    from trtkv.serving.triton import write_triton_repo

    folder = write_triton_repo(model_dir, output, engine, model_name)
    print(f"wrote {folder}; run: tritonserver --model-repository {output}", file=sys.stderr)
