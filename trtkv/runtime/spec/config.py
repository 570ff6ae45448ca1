"""`SpeculativeConfig`: the speculative-decoding options, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from trtkv.errors import ConfigError

SPECULATIVE_METHODS = ("none", "ngram", "draft")
DEFAULT_NUM_SPECULATIVE_TOKENS = 4


@dataclass(frozen=True)
class SpeculativeConfig:
    """Options of speculative decoding.

    Attributes:
        method: none, ngram (prompt lookup) or draft (a draft model).
        num_speculative_tokens: most draft tokens per sequence per step; 0 = 4 when a
            method is set.
        draft_model: the draft model's export directory (method draft).
        prompt_lookup_max: ngram: the longest suffix looked up in the sequence's history.
        prompt_lookup_min: ngram: the shortest.
    """

    method: str = "none"
    num_speculative_tokens: int = 0
    draft_model: str = ""
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ConfigError(f"--speculative-method must be one of {', '.join(SPECULATIVE_METHODS)}, "
                              f"got {self.method!r}")
        if not isinstance(self.num_speculative_tokens, int) or not 0 <= self.num_speculative_tokens <= 64:
            raise ConfigError(f"--num-speculative-tokens must be in [0, 64] (0 = {DEFAULT_NUM_SPECULATIVE_TOKENS}), "
                              f"got {self.num_speculative_tokens!r}")
        if self.method == "none" and self.num_speculative_tokens:
            raise ConfigError("--num-speculative-tokens needs --speculative-method ngram or draft")
        if self.method == "draft" and not self.draft_model:
            raise ConfigError("--speculative-method draft needs --draft-model DIR (a trtkv export of a smaller "
                              "model with the same tokenizer)")
        if self.draft_model and self.method != "draft":
            raise ConfigError("--draft-model applies to --speculative-method draft; add it or drop --draft-model")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ConfigError(f"--prompt-lookup-min / --prompt-lookup-max must satisfy 1 <= min <= max, got "
                              f"{self.prompt_lookup_min} / {self.prompt_lookup_max}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def num_tokens(self) -> int:
        """Draft tokens per sequence per step (the default when unset)."""
        return self.num_speculative_tokens or DEFAULT_NUM_SPECULATIVE_TOKENS
