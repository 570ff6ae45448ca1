"""`SamplingDefaults`: the one set of sampling defaults, used by the Python API, the CLI, the
OpenAI server and the Triton model alike.

The built-in values are OpenAI's (16 tokens, temperature 1). A model's
``generation_config.json`` (copied into every export) overrides them, as its authors meant
and as vLLM's ``--generation-config auto`` and transformers' ``generate`` do: the sampling
fields it sets (``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
``max_new_tokens``), and ``do_sample: false`` means greedy (temperature 0). A request's own
values always win.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trtkv.runtime.sampling.params import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
DEFAULT_CHAT_MAX_NEW_TOKENS = 256
"""A chat reply's budget when the client gives none (the CLI's chat and the server's
``--default-chat-max-tokens``), capped by what the context has left."""

_FROM_GENERATION_CONFIG = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")


@dataclass(frozen=True)
class SamplingDefaults:
    """Values a request gets for the sampling fields it leaves out.

    Attributes:
        source: where they come from (``built-in``, or the generation_config.json path).
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    source: str = "built-in"

    @classmethod
    def for_model(cls, model_dir: str | Path) -> SamplingDefaults:
        """The built-in defaults overlaid with the model's generation_config.json (when it
        has one that parses; a broken file is ignored: it only refines defaults)."""
        path = Path(model_dir) / "generation_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        return cls().overlay(config, source=str(path)) if isinstance(config, dict) else cls()

    def overlay(self, config: dict[str, Any], *, source: str) -> SamplingDefaults:
        """These defaults with the valid sampling fields of a generation config."""
        kinds = {f.name: f.type for f in fields(self)}
        found: dict[str, Any] = {}
        for name in _FROM_GENERATION_CONFIG:
            value = config.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            if kinds[name] == "int" and (value != int(value) or value < 0):
                continue
            found[name] = int(value) if kinds[name] == "int" else float(value)
        if found.get("max_new_tokens") == 0:
            del found["max_new_tokens"]
        if config.get("do_sample") is False:
            found["temperature"] = 0.0
        return replace(self, **found, source=source) if found else self

    def fill(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` (SamplingParams fields; None = not given) with the defaults filled in."""
        out = {k: v for k, v in given.items() if v is not None}
        for f in fields(self):
            if f.name != "source" and out.get(f.name) is None:
                out[f.name] = getattr(self, f.name)
        return out

    def params(self, **given: Any) -> SamplingParams:
        """`SamplingParams` from the fields given (None = use the default).

        Raises:
            InvalidRequestError: a value is out of range.
        """
        from trtkv.runtime.sampling.params import SamplingParams  # params imports this module

        return SamplingParams(**self.fill(given))
