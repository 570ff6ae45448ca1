"""Calibration from the user's data (`--calibration-file`): plain text and chat JSONL rendered
by the model's chat template; statistics recorded in the manifest; bad files one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trtkv.errors import ConfigError
from trtkv.export.calibrate import calibrate, file_prompts
from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.models import DEFAULT_MODEL_DIR
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine, load_tokenizer
from trtkv.runtime.sampling import SamplingParams

CHATS = [
    {"messages": [{"role": "user", "content": "Write a function that adds two numbers."},
                  {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"}]},
    {"messages": [{"role": "user", "content": "And one that reverses a list?"},
                  {"role": "assistant", "content": "def rev(xs):\n    return xs[::-1]\n"}]},
    {"text": "import os\nprint(os.getcwd())\n"},
]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8")
    export(DEFAULT_MODEL_DIR, out, ExportConfig(kv_dtype="int8", progress=False))
    return out


def test_chat_jsonl_is_rendered_by_the_chat_template(int8_export: Path, tmp_path: Path) -> None:
    from trtkv.runtime.chat import render_chat

    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CHATS) + "\n\n")
    tokenizer = load_tokenizer(int8_export)
    prompts = file_prompts(tokenizer, path, 512)
    assert prompts[0] == render_chat(tokenizer, CHATS[0]["messages"], add_generation_prompt=False)
    assert prompts[2] == list(tokenizer.encode(CHATS[2]["text"]))
    m = calibrate(int8_export, num_texts=8, calibration_file=path)
    assert m.has_calibrated_kv_scales and len(m.k_scales[0]) == m.num_kv_heads  # per-head by default
    c = Manifest.load(int8_export).kv_calibration
    # Three samples: two calibrate, one is held out to measure the perplexity change.
    assert c["source"] == "file chats.jsonl" and c["num_samples"] == 2 and c["num_heldout_samples"] == 1
    assert c["num_tokens"] == sum(map(len, prompts[:2]))
    assert c["granularity"] == "per-head" and 0.0 <= c["saturated_at_default_scales"] < 1.0
    assert c["heldout_perplexity_fp32_kv"] > 1.0 and abs(c["perplexity_change_pct"]) < 10.0
    engine = Engine(int8_export, EngineConfig())  # calibrated: no refusal
    engine.add_request("def f():", SamplingParams(max_new_tokens=2, temperature=0))
    while engine.has_unfinished():
        engine.step()


def test_plain_text_is_cut_into_prompts(int8_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text((Path(DEFAULT_MODEL_DIR) / "README.md").read_text() * 4)
    tokenizer = load_tokenizer(int8_export)
    prompts = file_prompts(tokenizer, path, 64)
    assert len(prompts) > 2 and all(len(p) == 64 for p in prompts[:-1])
    m = calibrate(int8_export, num_texts=3, calibration_file=path, granularity="per-tensor")
    assert m.kv_calibration["num_samples"] + m.kv_calibration["num_heldout_samples"] == 3 and len(m.k_scales[0]) == 1


@pytest.mark.parametrize("content,needle", [
    ('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n', "line 2 is not JSON"),
    ('{"prompt": "x"}\n', 'want {"messages"'),
    ("", "holds no text"),
])
def test_bad_calibration_files(int8_export: Path, tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / ("bad.jsonl" if content else "empty.txt")
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("{", r"\{")):
        calibrate(int8_export, calibration_file=path)


@pytest.mark.slow  # a CLI subprocess over a calibration run
def test_cli_calibrate_reports_what_it_measured(int8_export: Path, tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in CHATS))
    r = subprocess.run([sys.executable, "-m", "trtkv", "calibrate", str(int8_export), "--calibration-file",
                        str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "on 2 prompts" in r.stderr and "file chats.jsonl" in r.stderr and "saturated" in r.stderr
    assert "1 held-out prompt" in r.stderr and "with fp32 KV" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trtkv", "calibrate", str(int8_export), "--calibration-file",
                        str(tmp_path / "missing.txt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --calibration-file")
