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
    calibration_file: Annotated[str | None, typer.Option(metavar="FILE", show_default=False, help=(
        "your text: plain text, or .jsonl with one {\"messages\": [...]} chat (rendered by the model's "
        "template) or {\"text\": ...} per line; default: Python stdlib sources"))] = None,
    num_texts: Annotated[int, typer.Option(help="calibration prompts (of at most 512 tokens) to use")] = 16,
    kv_scales: Annotated[Literal["per-tensor", "per-head"], typer.Option(
        help="one scale per layer, or one per KV head")] = "per-head",
) -> None:
    from trtkv.export.calibrate import calibrate

    m = calibrate(model_dir, num_texts, kv_scales, calibration_file=calibration_file)
    c = m.kv_calibration
    n = c["num_heldout_samples"]
    where = f"{n} held-out prompt{'s' if n > 1 else ''}" if n else "the calibration prompt (in sample)"
    print(f"calibrated {m.kv_dtype} KV scales ({kv_scales}) on {c['num_samples']} prompts, {c['num_tokens']} "
          f"tokens ({c['source']}): largest |K/V| {c['amax']:.3g}; the default scales would have saturated "
          f"{100 * c['saturated_at_default_scales']:.3g}% of the values; perplexity on {where} "
          f"{c['heldout_perplexity']:.4g} vs {c['heldout_perplexity_fp32_kv']:.4g} with fp32 KV "
          f"({c['perplexity_change_pct']:+.2f}%)", file=sys.stderr)
