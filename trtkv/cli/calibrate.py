"""`trtkv calibrate MODEL_DIR`: the fp8/int8 KV scales of an export, measured in place."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

from trtkv.cli import app
from trtkv.cli._args import ExportDir
from trtkv.cli._options import command


@command(app, "calibrate", help="calibrate the fp8/int8 KV scales of an exported model in place",
         rich_help_panel="Models")
def calibrate(
    model_dir: ExportDir,
    num_texts: Annotated[int, typer.Option(help="calibration texts (stdlib sources)")] = 16,
    kv_scales: Annotated[Literal["per-tensor", "per-head"], typer.Option(
        help="one scale per layer, or one per KV head")] = "per-tensor",
) -> None:
    from trtkv.export.calibrate import calibrate

    m = calibrate(model_dir, num_texts, kv_scales)
    print(f"calibrated {m.kv_dtype} KV scales ({kv_scales}) on {num_texts} texts: "
          f"layer 0 k={list(m.k_scales[0])} v={list(m.v_scales[0])}", file=sys.stderr)
