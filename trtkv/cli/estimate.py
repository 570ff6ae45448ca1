"""`trtkv estimate MODEL --memory-gib N`: KV bytes per token and what fits."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from trtkv.cli import app
from trtkv.cli._args import Json
from trtkv.cli._options import command


@command(app, "estimate", help="KV bytes per token and what fits in a memory budget",
         rich_help_panel="Models")
def estimate(
    model: Annotated[str, typer.Argument(metavar="MODEL", show_default=False, help=(
        "exported model directory or Hugging Face checkpoint directory"))],
    memory_gib: Annotated[float, typer.Option(show_default=False, help="memory the KV pool may use, in GiB")],
    kv_dtype: Annotated[Literal["auto", "fp32", "fp16", "bf16", "fp8", "int8"], typer.Option(
        help="KV pool dtype; auto = the model's")] = "auto",
    block_size: Annotated[int, typer.Option(help="tokens per KV block")] = 16,
    seq_len: Annotated[int, typer.Option(help="sequence length to count; 0 = the model's maximum")] = 0,
    json_out: Json = False,
) -> None:
    from trtkv.estimate import as_json, estimate, format_estimate, read_dims

    e = estimate(read_dims(model), memory_gib=memory_gib, kv_dtype=kv_dtype,
                 block_size=block_size, seq_len=seq_len)
    print(as_json(e) if json_out else format_estimate(e, memory_gib))
