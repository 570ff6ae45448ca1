"""Export options: sharded checkpoints, external weight data, dtypes, refusals."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from trtkv.errors import CheckpointError, ConfigError
from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.runtime.llm import LLM
from trtkv.runtime.sampling import SamplingParams

PROMPTS = [[5, 6, 7, 8], list(range(20, 70))]
GREEDY = SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True)


def _tokens(model_dir) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in LLM(model_dir, num_blocks=64).generate(PROMPTS, GREEDY)]


def test_sharded_checkpoint_and_external_data(tmp_path, checkpoint_factory, exported_factory):
    ckpt = checkpoint_factory("qwen3")
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(ckpt)).save_pretrained(str(sharded), max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    out = tmp_path / "ext"
    export(sharded, out, ExportConfig(progress=False, external_data_min_mib=0))
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert _tokens(out) == _tokens(exported_factory("qwen3"))


def test_manifest_records_the_model(exported_factory, checkpoint_factory):
    m = Manifest.load(exported_factory("mistral"))
    assert (m.architecture, m.num_kv_heads, m.head_dim) == ("mistral", 1, 80)
    assert m.sliding_windows == (64, 64)
    assert m.eos_token_ids == (2,) and m.op_versions == {"KVAppend": 1, "PagedAttention": 1}
    m = Manifest.load(exported_factory("llama"))
    assert m.rope["rope_type"] == "llama3" and not m.tie_word_embeddings


def test_refusals(tmp_path, checkpoint_factory):
    with pytest.raises(ConfigError, match="--dtype"):
        ExportConfig(dtype="int4")
    with pytest.raises(ConfigError, match="--calibrate and --calibration-file apply to fp8/int8"):
        ExportConfig(calibrate=4)
    with pytest.raises(ConfigError, match="--calibrate and --calibration-file apply to fp8/int8"):
        ExportConfig(calibration_file="text.txt")
    with pytest.raises(ConfigError, match="power of two"):
        ExportConfig(block_size=12)
    ckpt = checkpoint_factory("llama")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ckpt / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        export(broken, tmp_path / "o", ExportConfig(progress=False))
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        export(broken, tmp_path / "o", ExportConfig(progress=False))
