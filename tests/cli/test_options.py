"""The Typer CLI: options generated from the config dataclasses, one-line usage errors,
``--version``, and imports in one direction (the CLI imports features, never the reverse)."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from typer.main import get_command

from trtkv.bench.config import BenchConfig
from trtkv.build.config import BuildConfig
from trtkv.cli import app, main
from trtkv.cli._options import command, panel_name
from trtkv.export.config import ExportConfig
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig

PACKAGE = Path(__file__).resolve().parents[2] / "trtkv"


@dataclass(frozen=True)
class _Demo:
    count: int = field(default=3, metadata={"help": "how many"})
    ratio: float = field(default=0.5, metadata={"help": "a fraction"})
    name: str = field(default="x", metadata={"help": "a name", "aliases": ("--label",)})
    mode: str = field(default="a", metadata={"help": "a mode", "choices": ("a", "b")})
    on: bool = field(default=True, metadata={"help": "on by default"})
    off: bool = field(default=False, metadata={"help": "off by default"})


def _demo_app() -> tuple[typer.Typer, list[object]]:
    demo = typer.Typer()
    seen: list[object] = []

    @demo.callback()
    def _root() -> None:
        """(a group, so the command keeps its name)"""

    @command(demo, "run", help="demo")
    def run(path: str, config: _Demo, extra: int = 7) -> None:
        seen.append((path, config, extra))

    return demo, seen


@pytest.mark.parametrize("argv,expected", [
    ([], _Demo()),
    (["--count", "9", "--ratio", "0.25", "--label", "y", "--mode", "b", "--no-on", "--off"],
     _Demo(count=9, ratio=0.25, name="y", mode="b", on=False, off=True)),
    (["--name", "z"], _Demo(name="z")),
])
def test_options_from_a_dataclass_build_the_instance(argv: list[str], expected: _Demo) -> None:
    demo, seen = _demo_app()
    demo(["run", "p", *argv, "--extra", "1"], standalone_mode=False)
    assert seen == [("p", expected, 1)]


def test_a_choice_outside_the_list_is_refused() -> None:
    demo, seen = _demo_app()
    with pytest.raises(typer.BadParameter, match="'c' is not one of 'a', 'b'"):
        demo(["run", "p", "--mode", "c"], standalone_mode=False)
    assert seen == []


def _options(command_name: str) -> dict[str, object]:
    cmd = get_command(app).commands[command_name]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("command_name,configs", [
    ("export", [ExportConfig]), ("build", [BuildConfig]), ("generate", [EngineConfig]),
    ("chat", [EngineConfig]), ("serve", [ServerConfig, EngineConfig]),
    ("triton-repo", [EngineConfig]), ("bench", [BenchConfig, EngineConfig]),
])
def test_every_config_field_is_an_option_with_its_help_and_default(command_name: str, configs: list[type]) -> None:
    options = _options(command_name)
    for cls in configs:
        for f in dataclasses.fields(cls):
            opt = options[f.name]
            assert opt.help == f.metadata["help"], (command_name, f.name)  # type: ignore[attr-defined]
            assert opt.default == f.default, (command_name, f.name)  # type: ignore[attr-defined]
            assert opt.rich_help_panel == panel_name(cls)  # type: ignore[attr-defined]
            flags = [*opt.opts, *opt.secondary_opts]  # type: ignore[attr-defined]
            assert "--" + f.name.replace("_", "-") in flags
            for alias in f.metadata.get("aliases", ()):
                assert alias in flags


def test_vllm_spellings_are_aliases() -> None:
    assert "--kv-cache-dtype" in _options("generate")["kv_dtype"].opts  # type: ignore[attr-defined]
    assert "--max-num-batched-tokens" in _options("build")["max_num_tokens"].opts  # type: ignore[attr-defined]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps help at the terminal's width
    return subprocess.run([sys.executable, "-m", "trtkv", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_version_and_help() -> None:
    from importlib.metadata import version

    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"trtkv {version('trtkv')}"
    r = _run("--help")
    assert r.returncode == 0
    for name in ("export", "calibrate", "estimate", "build", "generate", "chat", "serve", "triton-repo", "bench"):
        assert name in r.stdout
    r = _run("generate", "--help")
    assert r.returncode == 0 and "Engine options" in r.stdout and "onnxruntime|tensorrt" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["generate", "m", "--bogus"], "No such option: --bogus"),
    (["generate", "m", "--backend", "cuda"], "'cuda' is not one of 'onnxruntime', 'tensorrt'"),
    (["generate", "m", "--num-blocks", "many"], "'--num-blocks'"),
    (["estimate", "m"], "Missing option '--memory-gib'"),
    (["export"], "Missing argument 'CHECKPOINT'"),
])
def test_usage_errors_are_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert f"see `trtkv {args[0]} --help`" in err[0]


def test_features_never_import_the_cli() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: {n}" for n in names if n == "trtkv.cli" or n.startswith("trtkv.cli.")]
    assert offenders == []
