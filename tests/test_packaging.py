"""The package as a user installs it: the wheel's base install runs the main job without torch
and ships the plugin sources; each missing extra is one line naming it, exit 2."""

from __future__ import annotations

import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

from trtkv.cli import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
BUILT_IN_MODEL = "trtkv/models/tiny-stdlib"
PLUGIN_SOURCES = ("CMakeLists.txt", "kernels/paged_attention.cu", "kernels/kv_append.cu",
                  "capi/trtkv_kernels.cu", "tensorrt/plugin_registration.cpp",
                  "tensorrt/paged_attention_plugin.cpp", "generated/trtkv_ops.h")


def _check(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.slow
def test_wheel_without_extras_runs_the_main_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
            str(REPO)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("trtkv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [s for s in PLUGIN_SOURCES if f"trtkv/_plugins/{s}" not in names]
    assert not missing, f"the wheel lacks plugin sources {missing}"
    assert "trtkv/models/tiny-stdlib/model.safetensors" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py, trtkv = env_dir / "bin" / "python", env_dir / "bin" / "trtkv"
    # Base dependencies resolve from the index (pip's cache makes a rerun quick); no extras.
    _check([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=tmp_path)
    probe = ("import importlib.util, trtkv, trtkv.build.plugin_library as p; "
             "print(importlib.util.find_spec('torch') is None); print(trtkv.__file__); "
             "print(p.PLUGINS_SOURCE_DIR)")
    no_torch, package_file, plugins_dir = _check([str(py), "-c", probe], cwd=tmp_path).stdout.split()
    assert no_torch == "True", "the base install pulled in torch"
    assert Path(package_file).is_relative_to(env_dir), package_file
    # Outside a checkout, `trtkv build` reads the sources the wheel ships.
    assert Path(plugins_dir) == Path(package_file).parent / "_plugins"
    assert all((Path(plugins_dir) / s).is_file() for s in PLUGIN_SOURCES)

    out = tmp_path / "out"
    _check([str(trtkv), "export", BUILT_IN_MODEL, "-o", str(out)], cwd=REPO)
    r = _check([str(trtkv), "generate", str(out), "--prompt", "import os", "--max-new-tokens", "8"], cwd=REPO)
    assert "(length, 8 tokens)" in r.stdout or "(stop, " in r.stdout, r.stdout
    with capsys.disabled():
        print(f"\n[test_packaging] wheel build + fresh venv + export + generate: "
              f"{time.perf_counter() - start:.1f} s")


# -- missing extras: one line, exit 2 ------------------------------------------------------

#: Runs the CLI with ``argv[1]`` (comma-separated module names) unimportable.
_WITHOUT = ("import sys\n"
            "for name in sys.argv[1].split(','):\n"
            "    sys.modules[name] = None  # import of it raises ImportError\n"
            "from trtkv.cli import main\n"
            "sys.exit(main(sys.argv[2:]))\n")


def _run_without(modules: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT, modules, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built_in_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtkv.export.exporter import ExportConfig, export

    out = tmp_path_factory.mktemp("packaging_export")
    export(REPO / BUILT_IN_MODEL, out, ExportConfig(progress=False))
    return out


@pytest.mark.parametrize("modules, args, extra, what", [
    ("fastapi", ["serve", "{model}"], "serve", "trtkv serve"),
    ("matplotlib", ["bench", "--url", "http://127.0.0.1:9", "--output-png", "{tmp}/b.png"],
     "bench", "trtkv bench --output-png"),
    ("aiohttp", ["bench", "--url", "http://127.0.0.1:9"], "bench", "trtkv bench --url"),
    ("redis", ["generate", "{model}", "--prompt-ids", "1,2", "--enable-prefix-caching",
               "--kv-store-url", "redis://127.0.0.1:9/0"], "store", "--kv-store-url"),
    ("llguidance", ["generate", "{model}", "--prompt", "x", "--guided-regex", "[a-z]+"], "guided",
     "structured output (response_format, guided_*)"),
], ids=["serve", "bench-png", "bench-url", "store", "guided"])
def test_missing_extra_is_one_line(modules: str, args: list[str], extra: str, what: str,
                                   built_in_export: Path, tmp_path: Path) -> None:
    argv = [a.format(model=built_in_export, tmp=tmp_path) for a in args]
    r = _run_without(modules, *argv, cwd=tmp_path)
    assert r.returncode == EXIT_USER_ERROR, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: {what} needs the '{extra}' extra: pip install 'trtkv[{extra}]'"], r.stderr
    assert not (tmp_path / "b.png").exists()
