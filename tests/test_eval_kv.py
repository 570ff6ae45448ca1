"""`trtkv eval-kv`: the accuracy harness for any export (perplexity through the paged path,
KL against fp32 KV, greedy agreement), on the trained built-in model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trtkv.eval_kv import evaluate
from trtkv.export.exporter import ExportConfig, export
from trtkv.models import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def int8_calibrated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8cal")
    export(DEFAULT_MODEL_DIR, out, ExportConfig(kv_dtype="int8", calibrate=4, progress=False))
    return out


def test_rows_against_fp32(int8_calibrated: Path) -> None:
    rows = {r.kv_dtype: r for r in evaluate(int8_calibrated, ("fp16", "fp8", "int8"), num_windows=2,
                                            window_tokens=128, num_prompts=4, num_tokens=8)}
    base = rows["fp32"]
    assert base.kl_divergence == 0.0 and base.perplexity_change_pct == 0.0 and base.greedy_exact == 1.0
    assert 1.0 < base.perplexity < 500  # trained: far below uniform over its 2048 tokens
    assert rows["int8"].scales == "calibrated (per-head)" and rows["fp8"].scales == "default"
    assert rows["int8"].kv_bytes_per_token == rows["fp16"].kv_bytes_per_token // 2 == base.kv_bytes_per_token // 4
    for r in rows.values():
        assert r.kl_divergence >= 0.0 and 0.0 <= r.greedy_prefix_agreement <= 1.0
    assert rows["fp16"].kl_divergence < 1e-3 and abs(rows["int8"].perplexity_change_pct) < 5


@pytest.mark.slow  # two CLI subprocesses
def test_cli_json_and_bad_text(int8_calibrated: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text((Path(DEFAULT_MODEL_DIR) / "README.md").read_text() * 6)
    cmd = [sys.executable, "-m", "trtkv", "eval-kv", str(int8_calibrated), "--text", str(text), "--kv-dtype", "int8",
           "--windows", "1", "--window-tokens", "64", "--prompts", "2", "--tokens", "4", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["kv_dtype"] for row in rows] == ["fp32", "int8"] and rows[1]["perplexity"] > 0
    bad = subprocess.run([*cmd[:6], str(tmp_path / "nope.txt")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --text")
    short = tmp_path / "short.txt"
    short.write_text("x = 1")
    r = subprocess.run([*cmd[:6], str(short)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "fewer than one window" in r.stderr
