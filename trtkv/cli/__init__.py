"""`trtkv` command line: export, calibrate, eval-kv, estimate, build, generate, chat, serve, triton-repo, bench.

One module per command under this package; they import the features they run (lazily, in the
command body, so ``trtkv --help`` stays fast), and no feature imports the CLI. Options come
from the frozen config dataclasses (`trtkv.cli._options`). Every usage error and every
`TrtkvError` is one ``error:`` line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from trtkv.errors import TrtkvError

EXIT_USER_ERROR = 2

app = typer.Typer(
    name="trtkv", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
    help="LLM inference over a paged KV cache: HF checkpoint -> ONNX (trtkv ops) -> "
         "TensorRT / ONNX Runtime, with in-flight batching.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trtkv")
    except PackageNotFoundError:  # a source tree without an install
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"trtkv {_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="print the version and exit")] = False) -> None:
    """LLM inference over a paged KV cache: HF checkpoint -> ONNX (trtkv ops) -> TensorRT /
    ONNX Runtime, with in-flight batching."""


# Registration order is the order `trtkv --help` lists the commands (and their panels) in.
from trtkv.cli import export, calibrate, eval_kv, estimate, build  # noqa: E402, I001  (they register into `app`)
from trtkv.cli import generate, chat  # noqa: E402
from trtkv.cli import serve, triton, bench  # noqa: E402

del export, calibrate, eval_kv, estimate, build, generate, chat, serve, triton, bench


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="trtkv", standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: unknown option, bad value, ...
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `trtkv`: its message is the help
            print(message, file=sys.stderr)
            return EXIT_USER_ERROR
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {message}{hint}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USER_ERROR))
    except TrtkvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
