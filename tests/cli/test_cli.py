"""`trtkv export` + `trtkv generate --json` end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow

TRTKV = [sys.executable, "-m", "trtkv"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRTKV, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cli_export(checkpoint_factory, tmp_path_factory):
    ckpt = checkpoint_factory("qwen2")
    out = tmp_path_factory.mktemp("cli_export")
    r = _run("export", str(ckpt), "-o", str(out), "--dtype", "fp32", "--block-size", "8")
    assert r.returncode == 0, r.stderr
    return ckpt, out


def test_export_then_generate_json_matches_hf(cli_export):
    ckpt, out = cli_export
    prompts = [[5, 6, 7], [9], list(range(10, 60))]
    args = ["generate", str(out), "--json", "--max-new-tokens", "12", "--ignore-eos", "--temperature", "0",
            "--num-blocks", "64", "--max-num-batched-tokens", "32", "--max-num-seqs", "4"]
    for p in prompts:
        args += ["--prompt-ids", ",".join(map(str, p))]
    r = _run(*args)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["prompt_ids"] for row in rows] == prompts
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    for row in rows:
        ref = hf.generate(torch.tensor([row["prompt_ids"]]), max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(row["prompt_ids"]):].tolist()
        assert row["output_ids"] == ref
        assert row["finish_reason"] == "length" and "text" in row


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), r.stderr
    for needle in needles:
        assert needle in last, last


def test_bad_export_inputs(tmp_path, checkpoint_factory):
    _one_line_error(_run("export", str(tmp_path / "missing"), "-o", str(tmp_path / "o")), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_run("export", str(empty), "-o", str(tmp_path / "o")), "no config.json")
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint_factory("llama"), bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(cfg))
    _one_line_error(_run("export", str(bad), "-o", str(tmp_path / "o")), "unsupported model_type", "llama")
    trunc = tmp_path / "trunc"
    shutil.copytree(checkpoint_factory("llama"), trunc)
    st = trunc / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    _one_line_error(_run("export", str(trunc), "-o", str(tmp_path / "o")), "truncated")


def test_bad_generate_inputs(cli_export, tmp_path):
    _, out = cli_export
    _one_line_error(_run("generate", str(tmp_path / "nope"), "--prompt-ids", "1"), "does not exist")
    long_prompt = ",".join(["5"] * 600)  # the tiny model has 512 positions
    _one_line_error(_run("generate", str(out), "--prompt-ids", long_prompt), "max_model_len")
    _one_line_error(_run("generate", str(out), "--prompt-ids", "1,2,3", "--num-blocks", "1"), "KV blocks")
    _one_line_error(_run("generate", str(out), "--prompt-ids", "1,99999"), "outside the vocabulary")
    _one_line_error(_run("generate", str(out), "--prompt", "hi"), "no tokenizer")
    _one_line_error(_run("generate", str(out), "--prompt-ids", "1", "--temperature", "-1"), "temperature")


def test_generate_structured_output_options(chat_model_dir, tmp_path):
    import re

    pytest.importorskip("llguidance")
    r = _run("generate", str(chat_model_dir), "--prompt", "x =", "--json", "--n", "2", "--temperature", "0.8",
             "--seed", "1", "--max-new-tokens", "24", "--guided-regex", r"[0-9]{1,3}\.[0-9]")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(re.fullmatch(r"[0-9]{1,3}\.[0-9]", row["text"]) for row in rows), rows
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                                  "required": ["ok"], "additionalProperties": False}))
    r = _run("generate", str(chat_model_dir), "--prompt", "x", "--json", "--guided-json", str(schema))
    assert r.returncode == 0, r.stderr
    assert json.loads(json.loads(r.stdout)["text"]) in ({"ok": True}, {"ok": False})
    _one_line_error(_run("generate", str(chat_model_dir), "--prompt", "x", "--guided-regex", "(a"), "does not compile")
    _one_line_error(_run("generate", str(chat_model_dir), "--prompt", "x", "--guided-regex", "a",
                         "--guided-choice", "b"), "one structured-output option")
