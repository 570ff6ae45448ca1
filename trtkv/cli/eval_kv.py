"""`trtkv eval-kv MODEL_DIR`: perplexity, KL and greedy agreement of each KV dtype vs fp32 KV."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from trtkv.cli import app
from trtkv.cli._args import ExportDir, Json
from trtkv.cli._options import command


@command(app, "eval-kv", help="what each KV dtype costs in accuracy: perplexity, KL and greedy agreement "
         "against fp32 KV, through the paged path", rich_help_panel="Models")
def eval_kv(
    model_dir: ExportDir,
    text: Annotated[str | None, typer.Option(metavar="FILE", show_default=False, help=(
        "evaluation text (UTF-8); default: the built-in model's held-out Python stdlib sources"))] = None,
    kv_dtype: Annotated[list[str] | None, typer.Option(show_default=False, help=(
        "KV dtype to evaluate (repeatable; default fp16, bf16, fp8, int8, int8-dynamic: int8 with a scale per "
        "token and KV head)"))] = None,
    windows: Annotated[int, typer.Option(help="text windows for perplexity and KL")] = 4,
    window_tokens: Annotated[int, typer.Option(help="tokens per window")] = 256,
    chunk: Annotated[int, typer.Option(help="tokens fed per step (history is read back from the pool)")] = 64,
    prompts: Annotated[int, typer.Option(help="greedy prompts cut from the text")] = 8,
    tokens: Annotated[int, typer.Option(help="greedy tokens per prompt")] = 16,
    json_out: Json = False,
) -> None:
    from pathlib import Path

    from trtkv.errors import ConfigError
    from trtkv.eval_kv import as_dicts, evaluate, format_table

    if min(windows, window_tokens, chunk, prompts, tokens) < 1:
        raise ConfigError("--windows, --window-tokens, --chunk, --prompts and --tokens must be >= 1")
    content = None
    if text is not None:
        try:
            content = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--text {text}: cannot read it as UTF-8 text ({exc})") from None
    rows = evaluate(model_dir, tuple(kv_dtype or ("fp16", "bf16", "fp8", "int8", "int8-dynamic")), content, windows,
                    window_tokens, chunk, prompts, tokens)
    print(json.dumps(as_dicts(rows), indent=1) if json_out else format_table(rows))
