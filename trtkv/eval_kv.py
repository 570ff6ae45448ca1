"""`trtkv eval-kv`: what a KV dtype costs in accuracy, measured through the paged path.

For each KV dtype, against a float32 pool of the same export:

* perplexity on real text, fed in chunks, so every chunk attends to history read back from
  the (quantized) pool;
* KL divergence of the next-token distributions, token by token, on the same text;
* greedy agreement: prompts cut from the text, ``num_tokens`` greedy tokens each, as the share
  of positions before the first difference and the share of identical outputs.

A quantized dtype uses the export's calibrated scales when the export has that dtype, else
the documented default scales (the row says which). ONNX Runtime on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.ops.schema import KV_DTYPES, QUANTIZED_KV_DTYPES, ceil_div


@dataclass(frozen=True)
class KVEval:
    """One KV dtype's accuracy (the fp32 row is the baseline)."""

    kv_dtype: str
    scales: str
    """"calibrated (per-head)" / "default" / "-" (not quantized)."""
    kv_bytes_per_token: int
    perplexity: float
    perplexity_change_pct: float
    kl_divergence: float
    """Mean KL(fp32-KV || this) of the next-token distributions, nats per token."""
    greedy_prefix_agreement: float
    greedy_exact: float


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def chunk_logprobs(backend: object, window: list[int], chunk: int) -> list[np.ndarray]:
    """Log-probabilities of every next token of ``window``, chunk by chunk through the pool."""
    from trtkv.runtime.plan import ScheduledSeq, StepPlan

    blocks = tuple(range(backend.num_blocks))  # type: ignore[attr-defined]
    out = []
    for start in range(0, len(window) - 1, chunk):
        tokens = window[start:start + chunk]
        logits = backend.execute(StepPlan(seqs=(  # type: ignore[attr-defined]
            ScheduledSeq(0, tuple(tokens), start, blocks, True, all_logits=True),)))
        out.append(_log_softmax(logits[: min(len(tokens), len(window) - 1 - start)].astype(np.float64)))
    return out


def greedy_outputs(model_dir: Path, manifest: Manifest, prompts: list[list[int]], num_tokens: int,
                   cpu_matmul: str = "auto") -> list[list[int]]:
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.engine import Engine
    from trtkv.runtime.sampling import SamplingParams

    num_blocks = len(prompts) * ceil_div(max(map(len, prompts)) + num_tokens, manifest.block_size)
    backend = OnnxRuntimeBackend(model_dir, manifest, BackendConfig(num_blocks=num_blocks, cpu_matmul=cpu_matmul))
    engine = Engine(model_dir, EngineConfig(num_blocks=num_blocks, allow_uncalibrated_kv=True,
                                            max_num_batched_tokens=4096), backend=backend)
    params = SamplingParams(temperature=0, max_new_tokens=num_tokens, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts]
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    return [list(done[i].outputs[0].token_ids) for i in ids]


def evaluate(model_dir: str | Path, kv_dtypes: tuple[str, ...] = ("fp16", "bf16", "fp8", "int8"),
             text: str | None = None, num_windows: int = 4, window_tokens: int = 256, chunk: int = 64,
             num_prompts: int = 8, num_tokens: int = 16) -> list[KVEval]:
    """Accuracy of each of ``kv_dtypes`` against fp32 KV; the first row is fp32 itself.

    Args:
        text: the evaluation text (default: the built-in model's held-out stdlib text).

    Raises:
        ConfigError: an unknown dtype, or a text too short for one window.
        ModelDirError: not an export; no tokenizer.
    """
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from trtkv.runtime.engine import load_tokenizer

    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    bad = [k for k in kv_dtypes if k not in KV_DTYPES and k != DYNAMIC_INT8]
    if bad:
        raise ConfigError(f"--kv-dtype {bad[0]!r} is not a KV dtype; use {', '.join(KV_DTYPES)} or {DYNAMIC_INT8}")
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        from trtkv.errors import ModelDirError

        raise ModelDirError(f"{model_dir} has no tokenizer; eval-kv encodes text with it")
    if text is None:
        from trtkv.models import heldout_text

        text = heldout_text()
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    window_tokens = min(window_tokens, manifest.max_position_embeddings)
    windows = [ids[i * window_tokens:(i + 1) * window_tokens] for i in range(min(num_windows, len(ids) // window_tokens))]
    if not windows:
        raise ConfigError(f"the text has {len(ids)} tokens, fewer than one window of {window_tokens}; "
                          "give a longer text or a smaller --window-tokens")
    stride = max(1, len(ids) // max(1, num_prompts))
    prompts = [ids[i * stride:i * stride + 32] for i in range(num_prompts) if ids[i * stride:i * stride + 32]]
    blocks = ceil_div(window_tokens, manifest.block_size)

    def pool(kv: str) -> tuple[Manifest, str]:
        if kv == DYNAMIC_INT8:
            return manifest.with_kv("int8").with_scale_mode("dynamic"), "dynamic (per token, head, 32 values)"
        if kv == manifest.kv_dtype:
            calibrated = kv in QUANTIZED_KV_DTYPES and manifest.has_calibrated_kv_scales
            how = manifest.kv_calibration.get("granularity", "") if calibrated else ""
            label = (f"calibrated ({how})" if how else "calibrated") if calibrated else (
                "default" if kv in QUANTIZED_KV_DTYPES else "-")
            return manifest, label
        return manifest.with_kv(kv), "default" if kv in QUANTIZED_KV_DTYPES else "-"

    base_manifest = manifest.with_kv("fp32")
    base_backend = OnnxRuntimeBackend(model_dir, base_manifest, BackendConfig(num_blocks=blocks))
    base_lps = [chunk_logprobs(base_backend, w, chunk) for w in windows]
    base_out = greedy_outputs(model_dir, base_manifest, prompts, num_tokens)
    rows: list[KVEval] = []
    for kv in ("fp32", *[k for k in kv_dtypes if k != "fp32"]):
        m, label = pool(kv) if kv != "fp32" else (base_manifest, "-")
        if kv == "fp32":
            lps, outs = base_lps, base_out
        else:
            backend = OnnxRuntimeBackend(model_dir, m, BackendConfig(num_blocks=blocks))
            lps = [chunk_logprobs(backend, w, chunk) for w in windows]
            outs = greedy_outputs(model_dir, m, prompts, num_tokens)
        ppl = _perplexity(windows, lps, chunk)
        pairs = [(lp, blp) for chunks, base_chunks in zip(lps, base_lps, strict=True)
                 for lp, blp in zip(chunks, base_chunks, strict=True)]
        kl = sum(float((np.exp(blp) * (blp - lp)).sum()) for lp, blp in pairs) / sum(len(lp) for lp, _ in pairs)
        base_ppl = rows[0].perplexity if rows else ppl
        rows.append(KVEval(m.kv_dtype, label, m.kv_bytes_per_token(), ppl, (ppl / base_ppl - 1) * 100, kl,
                           *agreement(outs, base_out)))
    return rows


DYNAMIC_INT8 = "int8-dynamic"
"""eval-kv's name for an int8 pool with dynamic (per-token) scales."""


def perplexity(backend: object, windows: list[list[int]], chunk: int) -> float:
    """Perplexity of ``windows``, each fed in ``chunk``-token steps through ``backend``'s pool."""
    return _perplexity(windows, [chunk_logprobs(backend, w, chunk) for w in windows], chunk)


def _perplexity(windows: list[list[int]], logprobs: list[list[np.ndarray]], chunk: int) -> float:
    """Perplexity of ``windows`` from their `chunk_logprobs`."""
    nll, count = 0.0, 0
    for w, chunks in zip(windows, logprobs, strict=True):
        for c, lp in enumerate(chunks):
            targets = w[c * chunk + 1:c * chunk + 1 + len(lp)]
            nll -= float(lp[np.arange(len(targets)), targets].sum())
            count += len(targets)
    return math.exp(nll / count)


def agreement(outs: list[list[int]], base: list[list[int]]) -> tuple[float, float]:
    """(mean share of positions before the first difference, share of identical outputs)."""
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a)) / len(a)
              for a, b in zip(outs, base, strict=True)]
    return float(np.mean(prefix)), float(np.mean([a == b for a, b in zip(outs, base, strict=True)]))


def format_table(rows: list[KVEval]) -> str:
    lines = ["| KV dtype | scales | KV bytes/token | perplexity | vs fp32 KV | KL (nats/token) | "
             "greedy prefix agreement | exact |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.kv_dtype} | {r.scales} | {r.kv_bytes_per_token} | {r.perplexity:.3f} | "
                     f"{r.perplexity_change_pct:+.2f}% | {r.kl_divergence:.5f} | "
                     f"{100 * r.greedy_prefix_agreement:.1f}% | {100 * r.greedy_exact:.0f}% |")
    return "\n".join(lines)


def as_dicts(rows: list[KVEval]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
