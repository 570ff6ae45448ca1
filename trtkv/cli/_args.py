"""Arguments and options more than one command takes (one place for their help text)."""

from __future__ import annotations

from typing import Annotated

import typer

from trtkv.model_source import MODEL_HELP

Model = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
ExportDir = Annotated[str, typer.Argument(metavar="MODEL_DIR", show_default=False,
                                          help="exported model directory (trtkv export -o ...)")]
Json = Annotated[bool, typer.Option("--json", help="machine-readable JSON instead of text")]

# Sampling (generate, chat): a CLI run defaults to greedy decoding.
_MODEL_DEFAULT = "default: the model's generation_config.json, else "
Temperature = Annotated[float | None, typer.Option(
    help=f"0 = greedy; {_MODEL_DEFAULT}1.0", rich_help_panel="Sampling", show_default=False)]
TopK = Annotated[int | None, typer.Option(help=f"0 = off; {_MODEL_DEFAULT}0", rich_help_panel="Sampling",
                                          show_default=False)]
TopP = Annotated[float | None, typer.Option(help=f"nucleus sampling mass; {_MODEL_DEFAULT}1.0",
                                            rich_help_panel="Sampling", show_default=False)]
Seed = Annotated[int | None, typer.Option(help="seed (reproducible sampling)", rich_help_panel="Sampling",
                                          show_default=False)]
Stop = Annotated[list[str] | None, typer.Option(help="stop string (repeatable)", rich_help_panel="Sampling",
                                                show_default=False)]

# Chat rendering (chat, generate --chat).
System = Annotated[str | None, typer.Option(metavar="TEXT", rich_help_panel="Chat", show_default=False,
                                            help="a system message, first in every conversation")]
ChatTemplate = Annotated[str | None, typer.Option(metavar="FILE", rich_help_panel="Chat", show_default=False,
                                                  help="a Jinja chat template file used instead of the model's own")]
