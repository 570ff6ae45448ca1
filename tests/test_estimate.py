"""`trtkv estimate`: KV bytes per token and what fits, from a config.json or an export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtkv.errors import ConfigError, ModelDirError
from trtkv.estimate import estimate, format_estimate, read_dims

LLAMA3_8B = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "hidden_size": 4096, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


def test_llama3_8b_figures(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    dims = read_dims(tmp_path)
    e = estimate(dims, memory_gib=16)
    assert e.kv_dtype == "bf16" and e.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert e.num_tokens == 16 * 2**30 // (128 * 1024) == 131072
    assert e.num_seqs == 131072 // 8192 and e.longest_context == 8192
    fp8 = estimate(dims, memory_gib=16, kv_dtype="fp8", seq_len=1000)
    assert fp8.kv_bytes_per_token * 2 == e.kv_bytes_per_token and fp8.num_tokens == 2 * e.num_tokens
    assert fp8.num_seqs == fp8.num_blocks // 63  # 1000 tokens take 63 blocks of 16
    assert "128.0 KiB" in format_estimate(e, 16)


def test_from_an_export_matches_the_manifest(exported_factory) -> None:
    from trtkv.manifest import Manifest

    model = exported_factory("llama")
    e = estimate(read_dims(model), memory_gib=0.01)
    assert e.kv_bytes_per_token == Manifest.load(model).kv_bytes_per_token()


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="neither manifest.json"):
        read_dims(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in LLAMA3_8B.items() if k != "hidden_size"}))
    with pytest.raises(ModelDirError, match="hidden_size"):
        read_dims(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    dims = read_dims(tmp_path)
    for kwargs, match in ((dict(memory_gib=float("nan")), "memory-gib"), (dict(memory_gib=1, kv_dtype="fp4"), "kv-dtype"),
                          (dict(memory_gib=1, block_size=12), "power of two"), (dict(memory_gib=1, seq_len=-1), "seq-len")):
        with pytest.raises(ConfigError, match=match):
            estimate(dims, **kwargs)  # type: ignore[arg-type]


def test_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    ok = subprocess.run([sys.executable, "-m", "trtkv", "estimate", str(tmp_path), "--memory-gib", "16", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["num_tokens"] == 131072, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "trtkv", "estimate", str(tmp_path / "nope"), "--memory-gib", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
