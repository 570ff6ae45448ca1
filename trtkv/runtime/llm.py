"""`trtkv.LLM`: offline batch generation (and chat) over the engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from trtkv.runtime.chat import Message, render_chat
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.outputs import RequestOutput
from trtkv.runtime.sampling import SamplingParams

Prompt = str | Sequence[int]


class LLM:
    """Generate for many prompts at once with in-flight batching.

    Args:
        model_dir: an exported model directory.
        config: engine options; keyword arguments override its fields
            (``LLM(dir, num_blocks=64, max_num_seqs=8)``).
    """

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None, **overrides: Any) -> None:
        config = config or EngineConfig()
        if overrides:
            config = EngineConfig(**{**config.__dict__, **overrides})
        self.engine = Engine(model_dir, config)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion; returns final outputs in prompt order.

        Args:
            prompts: one prompt or a list; each a string or a list of token ids.
            params: one SamplingParams for all, or one per prompt.

        Raises:
            InvalidRequestError / RequestRejectedError: a prompt is malformed or can never
                be served; no request of the call is left running.
        """
        prompt_list = _as_prompt_list(prompts)
        if params is None or isinstance(params, SamplingParams):
            param_list = [params or self.engine.sampling_defaults.params()] * len(prompt_list)
        else:
            param_list = list(params)
            if len(param_list) != len(prompt_list):
                raise ValueError(f"got {len(param_list)} SamplingParams for {len(prompt_list)} prompts")
        ids: list[str] = []
        try:
            for prompt, p in zip(prompt_list, param_list, strict=True):
                ids.append(self.engine.add_request(prompt, p))
        except Exception:
            for rid in ids:
                self.engine.abort(rid)
            raise
        final: dict[str, RequestOutput] = {}
        while len(final) < len(ids):
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]

    def chat(self, messages: Sequence[Message] | Sequence[Sequence[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
             chat_template: str | None = None, add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Answer one conversation or a batch of them, each rendered by the chat template.

        Args:
            messages: one conversation (a list of ``{"role", "content"}`` dicts, oldest first)
                or a list of conversations.
            sampling_params: as for `generate`.
            chat_template: a Jinja template used instead of the tokenizer's own.
            add_generation_prompt: end each prompt with the opening of an assistant turn.

        Returns:
            Final outputs, one per conversation, in order.

        Raises:
            InvalidRequestError: no tokenizer or chat template, malformed messages, or the
                template rejects them (nothing is queued); otherwise as `generate`.
        """
        items = list(messages)
        is_batch = bool(items) and not isinstance(items[0], dict)
        conversations = cast(list[Sequence[Message]], items if is_batch else [items])
        prompt_ids = [render_chat(self.tokenizer, conv, chat_template=chat_template,
                                  add_generation_prompt=add_generation_prompt)
                      for conv in conversations]
        return self.generate(prompt_ids, sampling_params)


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and all(isinstance(t, int) for t in items):
        return [[int(t) for t in items]]  # type: ignore[arg-type]  # one token-id prompt
    return items  # type: ignore[return-value]
