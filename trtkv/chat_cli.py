"""`trtkv chat` (an interactive conversation) and the ``--chat`` options of `trtkv generate`.

Owns the chat command's options, its read-reply loop and the conversation history (kept
within the context window). Rendering is `trtkv.runtime.chat`'s; stepping is the engine's.
Registered into the main CLI by `trtkv.cli` (it calls `register`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from trtkv.errors import TrtkvError
from trtkv.runtime.chat import Message, check_chat_template, read_chat_template, render_chat

COMMANDS_HELP = "/reset clears the history, /exit (or end of input) quits"


def add_chat_options(p: argparse.ArgumentParser) -> None:
    """``--system`` and ``--chat-template``, shared by `trtkv chat` and `trtkv generate --chat`."""
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="a system message, first in every conversation")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template file used instead of the model's own")


def add_generate_chat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat", action="store_true",
                   help="each --prompt is a user message, rendered by the chat template")
    add_chat_options(p)


def generate_conversations(args: argparse.Namespace) -> tuple[list[list[Message]], str | None] | None:
    """`generate --chat`: one conversation per ``--prompt`` and the template text; None
    without ``--chat``.

    Raises:
        TrtkvError: chat options without ``--chat``, ``--prompt-ids`` with it, or a template
            file that cannot be read.
    """
    if not args.chat:
        if args.system is not None or args.chat_template is not None:
            raise TrtkvError("--system and --chat-template apply to chat prompts; add --chat")
        return None
    if args.prompt_ids:
        raise TrtkvError("--chat renders text messages: give --prompt TEXT, not --prompt-ids")
    template = read_chat_template(args.chat_template) if args.chat_template else None
    return [Conversation(args.system).messages(p) for p in args.prompt], template


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


def register(subparsers: Any) -> None:
    from trtkv.cli import add_dataclass_options
    from trtkv.model_source import MODEL_HELP
    from trtkv.runtime.config import EngineConfig

    p = subparsers.add_parser("chat", help="chat with an exported model on the terminal "
                              f"(streams replies; {COMMANDS_HELP})")
    p.add_argument("model_dir", help=MODEL_HELP)
    add_chat_options(p)
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per reply")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="per-reply seed (reproducible sampling)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="no streaming: one JSON object per reply (prompt_ids, output_ids, text, "
                        "finish_reason, num_dropped_turns)")
    add_dataclass_options(p, EngineConfig)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args: argparse.Namespace) -> int:
    from trtkv.cli import dataclass_from_args
    from trtkv.model_source import resolve_model
    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingParams

    template = read_chat_template(args.chat_template) if args.chat_template else None
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    llm = LLM(resolve_model(args.model_dir), dataclass_from_args(EngineConfig, args))
    try:
        tokenizer = llm.tokenizer
        check_chat_template(tokenizer, template)
        conv = Conversation(args.system)

        def render(messages: list[Message]) -> list[int]:
            return render_chat(tokenizer, messages, chat_template=template)

        render(conv.messages("hi"))  # a template that cannot render this chat fails now, not later
        _ChatLoop(llm.engine, conv, render, params, args.json).run(sys.stdin)
    finally:
        llm.engine.close()
    return 0


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
