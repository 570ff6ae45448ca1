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
from dataclasses import dataclass, fields
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
_INT_FIELDS = ("top_k", "max_new_tokens")


@dataclass(frozen=True)
class SamplingDefaults:
    """Values a request gets for the sampling fields it leaves out: the model's settings
    (``overrides``) over `SamplingParams`' own defaults, which stay the one copy of the
    built-in values.

    Attributes:
        overrides: (field, value) pairs the model's generation config sets.
        source: where they come from (``built-in``, or the generation_config.json path).
    """

    overrides: tuple[tuple[str, float], ...] = ()
    source: str = "built-in"

    @classmethod
    def for_model(cls, model_dir: str | Path) -> SamplingDefaults:
        """The model's generation_config.json over the built-in defaults (when it has one
        that parses; a broken file is ignored: it only refines defaults)."""
        path = Path(model_dir) / "generation_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        return cls.from_generation_config(config, source=str(path)) if isinstance(config, dict) else cls()

    @classmethod
    def from_generation_config(cls, config: dict[str, Any], *, source: str) -> SamplingDefaults:
        """The valid sampling fields of a generation config (``do_sample: false`` = greedy)."""
        found: dict[str, float] = {}
        for name in _FROM_GENERATION_CONFIG:
            value = config.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                continue
            if name in _INT_FIELDS and (value != int(value) or value < (1 if name == "max_new_tokens" else 0)):
                continue
            found[name] = int(value) if name in _INT_FIELDS else float(value)
        if config.get("do_sample") is False:
            found["temperature"] = 0.0
        return cls(tuple(sorted(found.items())), source) if found else cls()

    def value(self, name: str) -> Any:
        """The default of one `SamplingParams` field."""
        for key, v in self.overrides:
            if key == name:
                return v
        from trtkv.runtime.sampling.params import SamplingParams  # params imports this module

        return {f.name: f.default for f in fields(SamplingParams)}[name]

    def fill(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` (SamplingParams fields; None = not given) with the model's settings
        filled in where not given (the rest take `SamplingParams`' defaults); a beam search
        takes only the model's max_new_tokens."""
        out = {k: v for k, v in given.items() if v is not None}
        beam = bool(out.get("use_beam_search"))
        for key, v in self.overrides:
            if not beam or key == "max_new_tokens":  # beam search takes no sampling shape
                out.setdefault(key, v)
        return out

    def params(self, **given: Any) -> SamplingParams:
        """`SamplingParams` from the fields given (None = use the default).

        Raises:
            InvalidRequestError: a value is out of range.
        """
        from trtkv.runtime.sampling.params import SamplingParams  # params imports this module

        return SamplingParams(**self.fill(given))
