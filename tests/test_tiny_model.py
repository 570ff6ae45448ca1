"""The committed tiny-stdlib checkpoint loads with HF transformers and is trained, not random."""

from __future__ import annotations

import math

import pytest

from trtkv.models import DEFAULT_MODEL_DIR, heldout_files, heldout_text

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MODEL_DIR = DEFAULT_MODEL_DIR
MAX_WEIGHTS_BYTES = 8_500_000
NUM_LOSS_TOKENS = 512
# Random init scores about log(vocab) (7.6 nats); the trained model about 5.1 on this snippet
# (the start of __future__.py, mostly prose) and 4.3 averaged over all held-out files.
MIN_NATS_BELOW_LOG_VOCAB = 2.0


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    m = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return m.eval()


def test_files_are_package_data() -> None:
    suffixes = {p.suffix for p in MODEL_DIR.iterdir()}
    # pyproject ships *.json, *.txt, *.safetensors, *.md only.
    assert suffixes <= {".json", ".txt", ".safetensors", ".md"}, suffixes
    assert (MODEL_DIR / "model.safetensors").stat().st_size < MAX_WEIGHTS_BYTES


def test_config_is_gqa_llama(model, tokenizer) -> None:
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    assert cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size
    assert cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer)
    assert cfg.bos_token_id == tokenizer.bos_token_id
    assert cfg.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_tokenizer_round_trips_any_text(tokenizer) -> None:
    text = "def f(x):\n\treturn 'héllo wörld — 日本語 🐍'  # ünïcode\r\n"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text).input_ids
    assert with_bos[0] == tokenizer.bos_token_id and with_bos[1:] == ids


def test_chat_template(tokenizer) -> None:
    messages = [{"role": "user", "content": "Write a function."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWrite a function.</s>\n<|assistant|>\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_tokens_to_ids("<|user|>") in ids
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in ids


def test_loss_on_heldout_text_shows_training(model, tokenizer) -> None:
    assert heldout_files(), "heldout_files.json is empty"
    text = heldout_text(max_chars=4 * NUM_LOSS_TOKENS)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :NUM_LOSS_TOKENS]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < math.log(len(tokenizer)) - MIN_NATS_BELOW_LOG_VOCAB, loss
