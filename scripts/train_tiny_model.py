"""Train ``trtkv/models/tiny-stdlib``: a small Llama trained on the Python stdlib's own source.

The checkpoint is the built-in default model and the model behind KV-cache quantization
accuracy checks, so its weights must carry real structure. Everything it needs is offline:
the corpus is the running interpreter's standard library, the tokenizer is a byte-level BPE
trained here, the model is trained on CPU for a fixed wall-clock budget or step count.

Run from the repository root::

    python scripts/train_tiny_model.py --minutes 25

This script owns only the files it writes under ``--out``; it imports nothing from ``trtkv``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import random
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "trtkv" / "models" / "tiny-stdlib"

# Directories never used as text: tests are huge and repetitive, encodings are charmap tables,
# and the rest were removed from CPython after 3.11, so their files cannot be held out.
EXCLUDED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "site-packages",
        "lib2to3",
        "distutils",
        "encodings",
        "__pycache__",
        "turtledemo",
    }
)
# Modules removed (PEP 594, PEP 632, ...) or turned into packages after 3.11: a held-out
# list must name only files that exist in every CPython 3.11+ stdlib.
EXCLUDED_FILES = frozenset(
    {
        "aifc.py",
        "asynchat.py",
        "asyncore.py",
        "cgi.py",
        "cgitb.py",
        "chunk.py",
        "crypt.py",
        "imghdr.py",
        "imp.py",
        "mailcap.py",
        "nntplib.py",
        "pipes.py",
        "smtpd.py",
        "sndhdr.py",
        "sunau.py",
        "telnetlib.py",
        "uu.py",
        "xdrlib.py",
        "pathlib.py",
        "sysconfig.py",
        "zipfile.py",
        "tkinter/tix.py",
        "importlib/resources/_legacy.py",
        "importlib/resources/_itertools.py",
        "importlib/metadata/_itertools.py",
    }
)
HELDOUT_EVERY = 20
# A prompt ending in a space ends in a lone-space token the byte-level BPE rarely emits in
# training (spaces attach to the next word), so the second prompt shows the model better.
SAMPLE_PROMPTS = ("def ", "class Foo:\n    def __init__(self")
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all fixed but the budget)."""

    vocab_size: int = 2048
    """BPE vocabulary size, special tokens included."""
    hidden_size: int = 256
    """Model width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int = 2
    """Key/value heads (GQA: fewer than query heads)."""
    intermediate_size: int = 704
    """MLP width."""
    seq_len: int = 256
    """Training sequence length in tokens."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay to 10%)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    seed: int = 0
    """Seed of every random generator."""
    eval_tokens: int = 32768
    """Held-out tokens scored for the final perplexity."""


def list_stdlib_files(stdlib: Path) -> list[str]:
    """Relative POSIX paths of the stdlib's ``.py`` files used as corpus, sorted."""
    files = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib).as_posix()
        parts = rel.split("/")
        if set(parts[:-1]) & EXCLUDED_DIRS or parts[0].startswith("config-"):
            continue
        if rel in EXCLUDED_FILES:
            continue
        files.append(rel)
    return sorted(files)


def read_texts(stdlib: Path, files: list[str]) -> list[str]:
    return [(stdlib / f).read_text(encoding="utf-8", errors="replace") for f in files]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (every string round-trips), wrapped for ``transformers``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def encode_corpus(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> np.ndarray:
    """One stream: ``<s> file </s>`` for every file, in order."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for seq in ids:
        out.append(tokenizer.bos_token_id)
        out.extend(seq)
        out.append(tokenizer.eos_token_id)
    return np.asarray(out, dtype=np.int64)


def create_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    return LlamaForCausalLM(config)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warm-up by step, then cosine decay by budget ``progress`` in [0, 1]."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def sample_batch(stream: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    starts = rng.integers(0, len(stream) - cfg.seq_len - 1, size=cfg.batch_size)
    return torch.from_numpy(np.stack([stream[s : s + cfg.seq_len + 1] for s in starts]))


@torch.no_grad()
def heldout_nll(model: LlamaForCausalLM, stream: np.ndarray, cfg: TrainConfig) -> tuple[float, int]:
    """Mean next-token NLL (nats) over non-overlapping windows; returns (nll, tokens scored)."""
    model.eval()
    total, count = 0.0, 0
    window = cfg.seq_len + 1
    for start in range(0, min(len(stream), cfg.eval_tokens) - window + 1, cfg.seq_len):
        ids = torch.from_numpy(stream[start : start + window]).unsqueeze(0)
        logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum")
        total += loss.item()
        count += cfg.seq_len
    model.train()
    return total / count, count


def unigram_nll(train: np.ndarray, heldout: np.ndarray, vocab_size: int, num_scored: int) -> float:
    """NLL (nats) of an add-one-smoothed unigram model fit on train, on the scored tokens."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[heldout[1 : num_scored + 1]].mean())


@torch.no_grad()
def greedy_sample(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    model.eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=80, do_sample=False)
    model.train()
    return str(tokenizer.decode(out[0], skip_special_tokens=True))


def write_portable_configs(out: Path) -> None:
    """Rewrite saved configs so transformers 4.48+ (pyproject's floor) loads them too.

    transformers 5 writes ``tokenizer_class: TokenizersBackend``, ``extra_special_tokens``
    as a list and only ``rope_parameters``; 4.x knows ``PreTrainedTokenizerFast``,
    ``additional_special_tokens`` and a top-level ``rope_theta``. Both read the result.
    """
    tok_path, cfg_path = out / "tokenizer_config.json", out / "config.json"
    tok_cfg = json.loads(tok_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = tok_cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tok_cfg["additional_special_tokens"] = extra
    elif extra:
        tok_cfg["extra_special_tokens"] = extra
    tok_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.get("rope_parameters") or {}
    cfg.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if "dtype" in cfg:
        cfg.setdefault("torch_dtype", cfg["dtype"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_readme(out: Path, info: dict[str, object]) -> None:
    text = f"""# tiny-stdlib

A {info["num_params"]:,}-parameter Llama (`LlamaForCausalLM`) trained from scratch on the
Python {info["python"]} standard library's own `.py` sources. It is small enough to commit and
run anywhere, and trained enough that its activations and KV cache have real structure: the
built-in default model of trtkv and the model behind KV-cache quantization accuracy checks.
It writes Python-looking code; it is not useful for anything else.

## Model

| field | value |
|---|---|
| hidden_size | {info["hidden_size"]} |
| layers | {info["num_layers"]} |
| attention heads / KV heads (GQA) | {info["num_heads"]} / {info["num_kv_heads"]} |
| head_dim | {info["head_dim"]} |
| intermediate_size | {info["intermediate_size"]} |
| vocab (byte-level BPE) | {info["vocab_size"]} |
| max_position_embeddings | 1024 (trained on {info["seq_len"]}-token windows) |
| rope_theta | 10000 |
| tied embeddings | yes |
| weights dtype | {info["dtype"]} ({info["size_mb"]:.2f} MB) |

Special tokens: `<s>` (bos), `</s>` (eos), `<pad>`, and `<|system|>`, `<|user|>`,
`<|assistant|>` for the chat template (which the model never saw in training).

## Training

- Command: `{info["command"]}`
- Corpus: {info["num_train_files"]} train files ({info["num_train_tokens"]:,} tokens) of the
  stdlib (no tests, encodings, idlelib, turtledemo, or modules removed after 3.11); every file
  whose sorted index % {HELDOUT_EVERY} == 0 is held out ({info["num_heldout_files"]} files,
  listed in `heldout_files.json`, read back by `trtkv.models.heldout_text`).
- Optimizer: AdamW, peak lr {info["lr"]}, {info["warmup_steps"]} warm-up steps, cosine decay,
  batch {info["batch_size"]} x {info["seq_len"]} tokens, seed {info["seed"]},
  `torch.set_num_threads(1)`.
- Steps: {info["steps"]} ({info["train_tokens_seen"]:,} tokens) in {info["minutes"]:.1f} min.
- Final train loss (mean of last 20 steps): {info["final_loss"]:.3f} nats/token.
- Held-out perplexity over {info["eval_tokens"]:,} tokens: **{info["ppl"]:.2f}**
  (add-one unigram baseline fit on train: {info["unigram_ppl"]:.1f}).
- Date: {info["date"]}; machine: {info["machine"]}; torch {info["torch"]},
  transformers {info["transformers"]}.

Greedy samples (fp32 weights, 80 new tokens):

{info["samples"]}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument(
        "--steps", type=int, default=None, help="fixed step count (overrides --minutes)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output model directory")
    parser.add_argument("--log-every", type=int, default=25, help="print the loss every N steps")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float16",
        help="dtype of the saved weights",
    )
    args = parser.parse_args()
    cfg = TrainConfig()

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = list_stdlib_files(stdlib)
    heldout_files = [f for i, f in enumerate(files) if i % HELDOUT_EVERY == 0]
    train_files = [f for i, f in enumerate(files) if i % HELDOUT_EVERY != 0]
    train_texts = read_texts(stdlib, train_files)
    heldout_texts = read_texts(stdlib, heldout_files)
    print(f"corpus: {len(train_files)} train / {len(heldout_files)} held-out files from {stdlib}")

    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    train_stream = encode_corpus(tokenizer, train_texts)
    heldout_stream = encode_corpus(tokenizer, heldout_texts)
    print(
        f"tokens: {len(train_stream):,} train / {len(heldout_stream):,} held-out, vocab {len(tokenizer)}"
    )

    model = create_model(cfg, tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model: {num_params:,} parameters")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    budget_s = args.minutes * 60.0
    t0 = time.time()
    step, losses = 0, []
    model.train()
    while True:
        elapsed = time.time() - t0
        if args.steps is not None:
            if step >= args.steps:
                break
            progress = step / args.steps
        else:
            if elapsed >= budget_s:
                break
            progress = elapsed / budget_s
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, progress)
        batch = sample_batch(train_stream, cfg, rng)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        # HF shifts labels internally, so labels=input_ids; the extra token keeps windows full.
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % args.log_every == 0 or step == 1:
            recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
            print(
                f"step {step:5d}  loss {recent:.3f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{time.time() - t0:7.1f}s",
                flush=True,
            )
    minutes = (time.time() - t0) / 60.0

    nll, num_scored = heldout_nll(model, heldout_stream, cfg)
    uni = unigram_nll(train_stream, heldout_stream, len(tokenizer), num_scored)
    final_loss = sum(losses[-20:]) / len(losses[-20:])
    print(
        f"final train loss {final_loss:.3f}; held-out ppl {math.exp(nll):.2f} over {num_scored} "
        f"tokens (unigram baseline {math.exp(uni):.1f}, log(vocab) ppl {len(tokenizer)})"
    )
    samples = [greedy_sample(model, tokenizer, prompt) for prompt in SAMPLE_PROMPTS]
    for prompt, sample in zip(SAMPLE_PROMPTS, samples, strict=True):
        print(f"sample from {prompt!r}:\n{sample}\n")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    model.to(dtype)
    model.config.dtype = args.dtype
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    # Keep the chat template inside tokenizer_config.json: no .jinja file to ship as package data.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    write_portable_configs(out)
    (out / "heldout_files.json").write_text(json.dumps(heldout_files, indent=1) + "\n")
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    command = (
        "python scripts/train_tiny_model.py "
        + (f"--steps {args.steps}" if args.steps is not None else f"--minutes {args.minutes:g}")
        + (f" --dtype {args.dtype}" if args.dtype != "float16" else "")
    )
    write_readme(
        out,
        {
            "num_params": num_params,
            "python": platform.python_version(),
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.hidden_size // cfg.num_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": len(tokenizer),
            "seq_len": cfg.seq_len,
            "dtype": args.dtype,
            "size_mb": size_mb,
            "command": command,
            "num_train_files": len(train_files),
            "num_train_tokens": len(train_stream),
            "num_heldout_files": len(heldout_files),
            "lr": cfg.lr,
            "warmup_steps": cfg.warmup_steps,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "steps": step,
            "train_tokens_seen": step * cfg.batch_size * cfg.seq_len,
            "minutes": minutes,
            "final_loss": final_loss,
            "eval_tokens": num_scored,
            "ppl": math.exp(nll),
            "unigram_ppl": math.exp(uni),
            "samples": "\n\n".join(
                f"From `{p!r}`:\n\n```python\n{s}\n```"
                for p, s in zip(SAMPLE_PROMPTS, samples, strict=True)
            ),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}, 1 CPU thread",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )
    print(f"saved to {out} ({size_mb:.2f} MB weights)")


if __name__ == "__main__":
    main()
