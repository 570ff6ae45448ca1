"""Weight-only quantization at export (--weights int8|int4): every linear layer becomes ONNX
Runtime's MatMulNBits, the logits stay close to the fp32 export's, and what cannot take such
weights (a TensorRT build, a non-fp32 export) refuses with one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import ALL_FAMILIES
from trtkv.errors import ConfigError
from trtkv.export.config import ExportConfig
from trtkv.export.exporter import export
from trtkv.manifest import Manifest
from trtkv.runtime.backends import BackendConfig, create_backend
from trtkv.runtime.plan import ScheduledSeq, StepPlan

# Relative RMS error of the logits against the fp32 export's (group 32). The random-weight test
# models are a chaotic worst case (Gaussian weights, errors amplified layer after layer): int4
# is checked exactly against its own dequantized weights below, and for accuracy on the
# trained model (benchmarks/RESULTS.md, "Weight-only quantization").
BOUNDS = {"int8": 0.1, "int4": 1.0}


def _logits(model_dir: Path, prompt: list[int]) -> np.ndarray:
    backend = create_backend(str(model_dir), BackendConfig(num_blocks=16, block_size=16))
    seq = ScheduledSeq(0, tuple(prompt), 0, tuple(range(-(-len(prompt) // 16))), True, all_logits=True)
    return np.asarray(backend.execute(StepPlan(seqs=(seq,))))


@pytest.fixture(scope="module")
def exports(checkpoint_factory, tmp_path_factory):
    cache: dict[tuple[str, str, str], Path] = {}

    def make(family: str, weights: str, algo: str = "rtn") -> Path:
        if (family, weights, algo) not in cache:
            out = tmp_path_factory.mktemp(f"w_{family}_{weights}_{algo}")
            # Accuracy level 0 (fp32 compute) so that the kernel's math is checked exactly below.
            export(checkpoint_factory(family), out, ExportConfig(weights=weights, weight_algo=algo,
                                                                 weight_accuracy_level=0, progress=False))
            cache[family, weights, algo] = out
        return cache[family, weights, algo]

    return make


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_linear_layers_become_matmulnbits_with_close_logits(family, weights, exports):
    q_dir, f_dir = exports(family, weights), exports(family, "none")
    m = Manifest.load(q_dir)
    assert (m.weights, m.weight_group_size) == (weights, 32)
    graph = onnx.load(str(q_dir / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 7 * m.num_layers + 1  # q k v o gate up down per layer, the head
    assert "MatMul" not in ops and "Gemm" not in ops
    bits = {n.input[1]: a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    head = next(k for k in bits if k.startswith(("model.embed_tokens.weight.T", "lm_head.weight.T")))
    assert bits.pop(head) == 8  # the LM head stays at int8
    v_proj = [k for k in bits if ".self_attn.v_proj.weight.T" in k]
    assert len(v_proj) == m.num_layers and {bits.pop(k) for k in v_proj} == {8}  # and so does v_proj
    assert set(bits.values()) == {8 if weights == "int8" else 4}
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, m.vocab_size, 40)]
    q, f = _logits(q_dir, prompt), _logits(f_dir, prompt)
    rel = float(np.sqrt(np.mean((q - f) ** 2)) / np.std(f))
    assert 0 < rel < BOUNDS[weights], f"{family} {weights}: relative logits error {rel:.4f}"
    if weights == "int8":
        assert (q.argmax(-1) == f.argmax(-1)).mean() >= 0.9


def _dequantize(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    """The [N, K] weight a MatMulNBits node computes with (ONNX Runtime's contrib-op format:
    B [N, blocks, bytes], packed low nibble first for 4 bits; zero points: absent (symmetric,
    2^(bits-1)), or one float per block (hqq))."""
    attrs = {a.name: a.i for a in node.attribute}
    packed = inits[node.input[1]]
    blocks = packed.shape[1]
    scales = inits[node.input[2]].reshape(-1, blocks)
    if attrs["bits"] == 4:
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], blocks, -1)
    else:
        codes = packed
    zero: np.ndarray | float = 2 ** (attrs["bits"] - 1)
    if len(node.input) > 3 and node.input[3]:
        zp = inits[node.input[3]]
        assert zp.dtype == np.float32, "float zero points (hqq)"
        zero = zp.reshape(-1, blocks)[:, :, None]
    w = (codes.astype(np.float32) - zero) * scales[:, :, None]
    return w.reshape(attrs["N"], -1)[:, : attrs["K"]]


@pytest.mark.parametrize(("weights", "algo"), [("int8", "rtn"), ("int4", "rtn"), ("int4", "hqq")])
def test_the_kernel_computes_with_round_to_nearest_weights(weights, algo, exports, checkpoint_factory, tmp_path):
    """Exactness of the lowering: the quantized graph's logits equal an fp32 graph's that
    multiplies by the dequantized weights, and those are the checkpoint's rounded to the
    nearest step (one scale per 32 inputs: the group's largest magnitude / 2^(bits-1))."""
    from safetensors.numpy import load_file

    q_dir = exports("qwen2", weights, algo)
    model = onnx.load(str(q_dir / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    original = load_file(str(checkpoint_factory("qwen2") / "model.safetensors"))
    nodes = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        w = _dequantize(node, inits)
        name = node.input[1].rsplit(".T_", 1)[0]  # model.layers.0.self_attn.q_proj.weight
        ref = original.get(name, original.get("model.embed_tokens.weight"))
        scales = inits[node.input[2]].reshape(w.shape[0], -1)
        step = np.abs(np.repeat(scales, 32, axis=1)[:, : w.shape[1]])  # scales may be negative
        err = np.divide(np.abs(w - ref), step, out=np.abs(w - ref), where=step > 0)  # an all-zero group: exact
        if len(node.input) > 3 and node.input[3]:  # hqq: a fitted grid, within a step almost everywhere
            assert np.mean(err <= 1 + 1e-5) >= 0.99, name
        else:  # round to nearest: half a step, except where the code range is one short on the side
            # opposite the group's largest magnitude (-8..7, -128..127): clipped, one step
            assert err.max() <= 1 + 1e-5 and np.mean(err <= 0.5 + 1e-5) >= 0.99, name
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{name}.dq"))
        nodes.append(helper.make_node("MatMul", [node.input[0], f"{name}.dq"], list(node.output)))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    twin = tmp_path / "twin"
    shutil.copytree(q_dir, twin)
    onnx.save(model, str(twin / "model.onnx"))
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, Manifest.load(q_dir).vocab_size, 33)]
    np.testing.assert_allclose(_logits(q_dir, prompt), _logits(twin, prompt), atol=2e-4, rtol=0)


def test_what_cannot_take_quantized_weights_refuses(exports, tmp_path):
    with pytest.raises(ConfigError, match="--dtype fp32"):
        ExportConfig(weights="int4", dtype="fp16")
    with pytest.raises(ConfigError, match="power of two"):
        ExportConfig(weights="int4", weight_group_size=24)
    from trtkv.build.engine_builder import build_engine

    with pytest.raises(ConfigError, match="TensorRT cannot build"):
        build_engine(exports("llama", "int4"), tmp_path / "engine")


def test_default_compute_is_int8_activations(checkpoint_factory, tmp_path):
    out = tmp_path / "w"
    export(checkpoint_factory("llama"), out, ExportConfig(weights="int4", progress=False))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    levels = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}


@pytest.mark.parametrize(("head", "v", "eight"), [("int4", "int4", set()), ("int4", "auto", {"v_proj"}),
                                                 ("auto", "int4", {"head"})])
def test_head_and_v_weights_int4_quantize_those_too(head, v, eight, checkpoint_factory, tmp_path):
    out = tmp_path / "h4"
    export(checkpoint_factory("llama"), out, ExportConfig(weights="int4", head_weights=head, v_weights=v, progress=False))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {n.input[1]: a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    kind = {k: "head" if k.startswith(("model.embed_tokens.weight.T", "lm_head.weight.T"))
            else "v_proj" if ".v_proj." in k else "other" for k in bits}
    assert {kind[k] for k, b in bits.items() if b == 8} == eight and set(bits.values()) <= {4, 8}
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, 200, 12)]
    assert np.isfinite(_logits(out, prompt)).all()


@pytest.mark.parametrize("flag", ["head_weights", "v_weights"])
def test_head_and_v_weights_refuse_what_does_not_apply(flag):
    name = "--" + flag.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{name} int8 quantizes .* add --weights int8 or int4"):
        ExportConfig(**{flag: "int8"})
    with pytest.raises(ConfigError, match="harder than the other layers"):
        ExportConfig(weights="int8", **{flag: "int4"})
    with pytest.raises(ConfigError, match=f"{name} must be auto, int8 or int4"):
        ExportConfig(weights="int4", **{flag: "fp16"})
