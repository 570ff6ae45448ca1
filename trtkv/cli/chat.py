"""`trtkv chat MODEL`: an interactive conversation on the terminal (streams replies).

Owns the read-reply loop and the conversation history (kept within the context window, with a
note when the oldest turns are dropped). Rendering is `trtkv.runtime.chat`'s; stepping is the
engine's.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TextIO

import typer

from trtkv.cli import app
from trtkv.cli._args import ChatTemplate, Model, Seed, Stop, System, Temperature, TopK, TopP
from trtkv.cli._options import command
from trtkv.errors import TrtkvError
from trtkv.runtime.chat import Message, check_chat_template, read_chat_template, render_chat
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.sampling_defaults import DEFAULT_CHAT_MAX_NEW_TOKENS

COMMANDS_HELP = "/reset clears the history, /exit (or end of input) quits"


@dataclass
class Conversation:
    """A chat's history: the system message (never dropped) and the finished turns."""

    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    """(user, assistant) pairs, oldest first."""

    def messages(self, user: str, num_dropped: int = 0) -> list[Message]:
        """The messages for answering ``user``, leaving out the ``num_dropped`` oldest turns."""
        out: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in self.turns[num_dropped:]:
            out += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        return [*out, {"role": "user", "content": user}]

    def fit(self, render: Callable[[list[Message]], list[int]], user: str,
            max_prompt_tokens: int) -> tuple[list[int], int]:
        """The prompt ids for ``user`` with as many recent turns as fit ``max_prompt_tokens``.

        Returns:
            (prompt ids, number of oldest turns left out); the ids may still be too long
            when the system and user messages alone are.
        """
        num_dropped = 0
        while True:
            ids = render(self.messages(user, num_dropped))
            if len(ids) <= max_prompt_tokens or num_dropped == len(self.turns):
                return ids, num_dropped
            num_dropped += 1


@command(app, "chat", help=f"chat with a model on the terminal (streams replies; {COMMANDS_HELP})",
         rich_help_panel="Run")
def chat(
    model: Model,
    engine: EngineConfig,
    system: System = None,
    chat_template: ChatTemplate = None,
    max_new_tokens: Annotated[int, typer.Option(help="most tokens per reply",
                                                rich_help_panel="Sampling")] = DEFAULT_CHAT_MAX_NEW_TOKENS,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    seed: Seed = None,
    stop: Stop = None,
    json_out: Annotated[bool, typer.Option("--json", help=(
        "no streaming: one JSON object per reply (prompt_ids, output_ids, text, finish_reason, "
        "num_dropped_turns)"))] = False,
) -> None:
    from trtkv.model_source import resolve_model
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingDefaults

    template = read_chat_template(chat_template) if chat_template else None
    model_dir = resolve_model(model)
    params = SamplingDefaults.for_model(model_dir).params(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        stop=tuple(stop or ()))
    llm = LLM(model_dir, engine)
    try:
        tokenizer = llm.tokenizer
        check_chat_template(tokenizer, template)
        conv = Conversation(system)

        def render(messages: list[Message]) -> list[int]:
            return render_chat(tokenizer, messages, chat_template=template)

        render(conv.messages("hi"))  # a template that cannot render this chat fails now, not later
        _ChatLoop(llm.engine, conv, render, params, json_out).run(sys.stdin)
    finally:
        llm.engine.close()


class _ChatLoop:
    """Read a line, answer it (streaming), remember the turn; until /exit or end of input."""

    def __init__(self, engine: Any, conv: Conversation, render: Callable[[list[Message]], list[int]],
                 params: Any, as_json: bool) -> None:
        self.engine = engine
        self.conv = conv
        self.render = render
        self.params = params
        self.as_json = as_json
        self.max_model_len: int = engine.scheduler.config.max_model_len

    def run(self, stdin: TextIO) -> None:
        is_tty = stdin.isatty()
        if is_tty:
            print(f"chatting with {self.engine.model_dir} ({COMMANDS_HELP})", file=sys.stderr)
        for line in _read_lines(stdin, is_tty):
            text = line.strip()
            if not text:
                continue
            if text == "/exit":
                return
            if text == "/reset":
                self.conv.turns.clear()
                print("(history cleared)", file=sys.stderr, flush=True)
                continue
            try:
                self.answer(text)
            except TrtkvError as exc:  # this message cannot be answered; the chat goes on
                print(f"error: {exc}", file=sys.stderr, flush=True)

    def answer(self, user: str) -> None:
        ids, num_dropped = self.conv.fit(self.render, user, self.max_model_len - self.params.max_new_tokens)
        request_id = self.engine.add_request(ids, self.params)
        if num_dropped:
            del self.conv.turns[:num_dropped]
            turns = "turn" if num_dropped == 1 else "turns"
            print(f"(dropped {num_dropped} oldest {turns} to fit the {self.max_model_len}-token context)",
                  file=sys.stderr, flush=True)
        try:
            final = self._stream(request_id)
        except KeyboardInterrupt:  # stop this reply, keep chatting
            self.engine.abort(request_id)
            print("\n(reply interrupted; not kept in the history)", file=sys.stderr, flush=True)
            return
        reply = final.outputs[0]
        self.conv.turns.append((user, reply.text))
        if self.as_json:
            print(json.dumps({"prompt_ids": list(final.prompt_ids), "output_ids": list(reply.token_ids),
                              "text": reply.text, "finish_reason": reply.finish_reason,
                              "num_dropped_turns": num_dropped}), flush=True)

    def _stream(self, request_id: str) -> Any:
        """Step until ``request_id`` finishes, writing its new text as it comes."""
        while True:
            for out in self.engine.step():
                if out.request_id != request_id:
                    continue
                if not self.as_json:
                    sys.stdout.write(out.outputs[0].new_text)
                    sys.stdout.flush()
                if out.finished:
                    if not self.as_json:
                        sys.stdout.write("\n")
                        sys.stdout.flush()
                    return out


def _read_lines(stdin: TextIO, is_tty: bool) -> Iterator[str]:
    """The user's lines: with a ``> `` prompt (and line editing) on a terminal."""
    if not is_tty:
        yield from stdin
        return
    while True:
        try:
            yield input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
