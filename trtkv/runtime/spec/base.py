"""What a proposer is asked (`DraftSlot`) and answers (`Draft`), and `create_proposer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from trtkv.runtime.sampling.params import SamplingParams
from trtkv.runtime.spec.config import SpeculativeConfig

if TYPE_CHECKING:
    from trtkv.manifest import Manifest
    from trtkv.runtime.backends.base import BackendConfig


class DraftSlot(NamedTuple):
    """A running sequence that decodes next step, as a proposer sees it.

    Attributes:
        seq_id: the sequence.
        token_ids: its prompt and output so far (read only).
        max_tokens: most draft tokens it may take (the step's limit and its remaining
            ``max_new_tokens`` less the token the target adds).
        params: its request's sampling parameters.
        generator: its random generator (a sampling draft model draws from it).
    """

    seq_id: int
    token_ids: Sequence[int]
    max_tokens: int
    params: SamplingParams
    generator: np.random.Generator


@dataclass(frozen=True)
class Draft:
    """Draft tokens for one sequence.

    Attributes:
        token_ids: 1..max_tokens proposed tokens.
        probs: float [len(token_ids), V] distributions they were drawn from; None when
            each was chosen deterministically (a point mass).
    """

    token_ids: tuple[int, ...]
    probs: npt.NDArray[np.floating] | None = None


class Proposer(Protocol):
    """Proposes draft tokens each step; holds no state the engine must keep in step
    beyond what ``propose`` is told (sequences it is not asked about are forgotten)."""

    def propose(self, slots: Sequence[DraftSlot]) -> dict[int, Draft]:
        """Drafts for (some of) ``slots``; a sequence left out decodes one token."""

    def close(self) -> None:
        """Release what it holds (a draft model's KV blocks); it stays usable."""


def create_proposer(config: SpeculativeConfig, *, target_model_dir: Path, target: Manifest,
                    backend: BackendConfig, num_blocks: int, block_size: int,
                    eos_token_ids: Sequence[int]) -> Proposer | None:
    """The proposer of ``config`` (None when speculation is off).

    Raises:
        ConfigError / ModelDirError: the draft model cannot serve this target.
    """
    if config.method == "ngram":
        from trtkv.runtime.spec.ngram import NgramProposer

        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "draft":
        from trtkv.runtime.spec.draft import DraftModelProposer

        return DraftModelProposer(Path(config.draft_model), target_model_dir=target_model_dir, target=target,
                                  backend=backend, num_tokens=num_blocks * block_size,
                                  eos_token_ids=eos_token_ids)
    return None
