"""Chat: `LLM.chat`, `trtkv generate --chat`, the interactive `trtkv chat`, and their errors.

The model is `chat_model_dir` (tests/conftest.py): an exported model whose tokenizer has a
chat template.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trtkv.errors import InvalidRequestError
from trtkv.runtime.chat import NoChatTemplateError, render_chat
from trtkv.runtime.llm import LLM
from trtkv.runtime.sampling import SamplingParams

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow

TRTKV = [sys.executable, "-m", "trtkv"]
ENGINE = ["--num-threads", "1", "--num-blocks", "128"]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
SYSTEM = "You answer in Python."


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRTKV, *args], input=stdin, capture_output=True, text=True, timeout=300)


def _one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


@pytest.fixture(scope="module")
def llm(chat_model_dir: Path) -> LLM:
    return LLM(chat_model_dir, num_threads=1, num_blocks=128)


@pytest.fixture(scope="module")
def no_template_dir(chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat model with its chat template removed (tokenizer kept)."""
    out = tmp_path_factory.mktemp("no_chat_template")
    shutil.copytree(chat_model_dir, out, dirs_exist_ok=True)
    for name in ("chat_template.jinja", "chat_template.json"):
        (out / name).unlink(missing_ok=True)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return out


def _user(*texts: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": t} for t in texts]


def test_llm_chat_equals_generate_on_the_rendered_ids(llm: LLM) -> None:
    one = _user("def add(a, b):", system=SYSTEM)
    two = _user("import os")
    ids = [render_chat(llm.tokenizer, m) for m in (one, two)]
    text = llm.tokenizer.decode(ids[0], skip_special_tokens=False)
    assert SYSTEM in text and "def add(a, b):" in text
    chatted = llm.chat([one, two], GREEDY)  # a batch of conversations
    generated = llm.generate(ids, GREEDY)
    assert [list(o.prompt_ids) for o in chatted] == ids
    assert [o.outputs[0].token_ids for o in chatted] == [o.outputs[0].token_ids for o in generated]
    single = llm.chat(one, GREEDY)  # one conversation
    assert len(single) == 1 and single[0].outputs[0].token_ids == chatted[0].outputs[0].token_ids


def test_server_renders_with_the_same_function(llm: LLM) -> None:
    from trtkv.serving.app import render_chat as server_render_chat
    from trtkv.serving.protocol import ApiError

    messages = _user("hi", system=SYSTEM)
    assert server_render_chat(llm.engine, messages) == render_chat(llm.tokenizer, messages)
    with pytest.raises(ApiError) as info:
        server_render_chat(llm.engine, [{"role": "user", "content": "hi"}, {"role": "user"}])
    assert info.value.status == 400


def test_llm_chat_errors(llm: LLM, no_template_dir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="messages\\[0\\]"):
        llm.chat([{"role": "user"}])
    with pytest.raises(InvalidRequestError, match="rejected the messages"):
        llm.chat(_user("hi"), chat_template="{% for m in messages %}{{ m.content }}")
    assert not llm.engine.has_unfinished()
    bare = LLM(no_template_dir, num_threads=1, num_blocks=16)
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        bare.chat(_user("hi"))
    # An explicit template serves a model that has none.
    template = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
    out = bare.chat(_user("hi"), GREEDY, chat_template=template)
    assert list(out[0].prompt_ids) == list(bare.tokenizer.encode("hi\n", add_special_tokens=False))


def test_generate_chat_system_json(chat_model_dir: Path, llm: LLM) -> None:
    r = _run("generate", str(chat_model_dir), "--chat", "--system", SYSTEM, "--prompt", "def add(a, b):",
             "--prompt", "import os", "--json", "--max-new-tokens", "6", "--ignore-eos", *ENGINE)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    expected = llm.chat([_user("def add(a, b):", system=SYSTEM), _user("import os", system=SYSTEM)], GREEDY)
    assert [row["prompt_ids"] for row in rows] == [list(o.prompt_ids) for o in expected]
    assert [row["output_ids"] for row in rows] == [list(o.outputs[0].token_ids) for o in expected]
    for row, user in zip(rows, ("def add(a, b):", "import os"), strict=True):
        text = llm.tokenizer.decode(row["prompt_ids"], skip_special_tokens=False)
        assert SYSTEM in text and user in text


def test_chat_command_streams_replies_and_resets_history(chat_model_dir: Path, llm: LLM) -> None:
    args = ["chat", str(chat_model_dir), "--max-new-tokens", "5", *ENGINE]
    r = _run(*args, "--json", stdin="hi\nmore\n/reset\nagain\n")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3
    tok = llm.tokenizer
    first = rows[0]["text"]
    assert rows[0]["prompt_ids"] == render_chat(tok, _user("hi"))
    history = [*_user("hi"), {"role": "assistant", "content": first}, *_user("more")]
    assert rows[1]["prompt_ids"] == render_chat(tok, history)  # the history is kept
    assert rows[2]["prompt_ids"] == render_chat(tok, _user("again"))  # ... and /reset clears it
    # Streaming, as a user sees it: the two replies, each ended by a newline; EOF ends the chat.
    r = _run(*args, stdin="hi\n/reset\nagain\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{first}\n{rows[2]['text']}\n"
    assert "(history cleared)" in r.stderr and "Traceback" not in r.stderr


def test_chat_command_drops_oldest_turns_to_fit_the_context(chat_model_dir: Path, llm: LLM) -> None:
    lines = ["def add(a, b): return a + b", "import os, sys, json, re", "class Foo: pass  # again"]
    max_new = 8
    # Room for the longest single message and its reply, never for two turns.
    max_len = max(len(render_chat(llm.tokenizer, _user(t, system="Be brief."))) for t in lines) + max_new + 2
    r = _run("chat", str(chat_model_dir), "--system", "Be brief.", "--json", "--max-new-tokens", str(max_new),
             "--max-model-len", str(max_len), *ENGINE, stdin="\n".join(lines) + "\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3
    assert all(len(row["prompt_ids"]) + max_new <= max_len for row in rows)
    assert [row["num_dropped_turns"] for row in rows] == [0, 1, 1]
    for row in rows:  # the system message is never dropped
        assert "Be brief." in llm.tokenizer.decode(row["prompt_ids"], skip_special_tokens=False)
    notes = re.findall(r"\(dropped (\d+) oldest turns? to fit the (\d+)-token context\)", r.stderr)
    assert notes == [("1", str(max_len))] * 2, r.stderr


def test_chat_errors_are_one_line(chat_model_dir: Path, no_template_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jinja")
    _one_line_error(_run("chat", str(chat_model_dir), "--chat-template", missing), "cannot read the chat template")
    _one_line_error(_run("generate", str(chat_model_dir), "--chat", "--prompt", "hi", "--chat-template", missing),
                    "cannot read the chat template")
    _one_line_error(_run("chat", str(no_template_dir), *ENGINE, stdin="hi\n"), "no chat template")
    _one_line_error(_run("generate", str(no_template_dir), "--chat", "--prompt", "hi", *ENGINE), "no chat template")
    _one_line_error(_run("generate", str(chat_model_dir), "--system", "x", "--prompt", "hi"), "add --chat")
