"""Quantized KV on the trained built-in model: calibration and measured accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from benchmarks.bench_kv_accuracy import perplexity
from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.models import DEFAULT_MODEL_DIR, heldout_text
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtkv.runtime.engine import load_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_fp32")
    export(DEFAULT_MODEL_DIR, out, ExportConfig(progress=False))
    return out


def test_calibrated_export_writes_consistent_scales(tmp_path):
    out = tmp_path / "fp8"
    m = export(DEFAULT_MODEL_DIR, out, ExportConfig(kv_dtype="fp8", calibrate=2, kv_scales="per-head", progress=False))
    assert m == Manifest.load(out)
    assert all(len(s) == m.num_kv_heads for s in m.k_scales)
    assert all(0 < x < 1.0 for s in (*m.k_scales, *m.v_scales) for x in s)  # amax / 448 of real K/V
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer
             if "_scale." in t.name}
    for i in range(m.num_layers):
        np.testing.assert_allclose(inits[f"k_scale.{i}"], m.k_scales[i], rtol=1e-6)
        np.testing.assert_allclose(inits[f"v_scale.{i}"], m.v_scales[i], rtol=1e-6)


def test_fp8_and_int8_perplexity_within_one_percent(tiny):
    from trtkv.export.calibrate import calibration_texts, collect_kv_amax, scales_from_amax

    tok = load_tokenizer(tiny)
    ids = tok.encode(heldout_text(max_chars=6000), add_special_tokens=False)[:384]
    base = Manifest.load(tiny)
    k, v, _ = collect_kv_amax(tiny, [tok.encode(t)[:256] for t in calibration_texts(2)], per_head=False)

    def ppl(manifest: Manifest) -> float:
        return perplexity(OnnxRuntimeBackend(tiny, manifest, BackendConfig(num_blocks=32, block_size=16)), [ids], 64)

    ref = ppl(base)
    assert ref < 300, f"trained model should beat a uniform guess by far, got ppl {ref}"
    for kv in ("fp8", "int8"):
        scales = (tuple((float(x[0]),) for x in scales_from_amax(k, kv)),
                  tuple((float(x[0]),) for x in scales_from_amax(v, kv)))
        got = ppl(base.with_kv(kv, scales))
        assert got != ref, "quantization changed nothing: the pool is not quantized"
        assert abs(got / ref - 1) < 0.01, (kv, got, ref)
    # A grossly wrong scale must hurt: the measurement can tell good scales from bad.
    bad = ((100.0,),) * base.num_layers
    assert ppl(base.with_kv("int8", (bad, bad))) > ref * 1.05
