"""`DraftModelProposer`: a smaller trtkv export proposes the draft, on its own KV pool.

The draft model runs on its own backend (the target's kind and threads) over its own
`KVCacheManager`, keyed by the target's sequence ids. Per step, for every decoding sequence
it is asked about: the draft's KV is rolled back to the tokens it shares with the sequence
(`truncate`: what the target rejected goes), the tokens it has not seen are fed (a new
sequence's whole prompt the first time: a draft prefill), and then it decodes up to
``max_tokens`` tokens one packed step at a time (greedy for greedy requests, else drawn from
its own distribution under the request's temperature / top-k / top-p / min-p, which the
verification's rejection rule needs). Sequences it is not asked about are freed; a
sequence its pool cannot hold gets no draft (it decodes one token), never an error.

Its pool holds as many tokens as the target's, so it runs short only when the target does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.ops.schema import ceil_div
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.plan import ScheduledSeq, StepPlan
from trtkv.runtime.sampling.params import SamplingParams
from trtkv.runtime.sampling.sampler import Sampler, SampleRow
from trtkv.runtime.spec.base import Draft, DraftSlot

if TYPE_CHECKING:
    from trtkv.runtime.backends.base import BackendConfig, BaseBackend


_MAX_CHUNK_TOKENS = 4096
"""Tokens per catch-up step of a draft backend without a step limit of its own (ONNX Runtime)."""


class DraftModelProposer:
    """See module docstring.

    Args:
        model_dir: the draft model's export.
        target_model_dir, target: the target model's export and manifest (vocabulary checks).
        backend: the target's backend options (kind, threads); the draft's pool is sized
            to ``num_tokens`` tokens and its KV dtype is its export's.
        num_tokens: tokens the draft pool holds.
        eos_token_ids: the target's EOS ids.
    """

    def __init__(self, model_dir: Path, *, target_model_dir: Path, target: Manifest, backend: BackendConfig,
                 num_tokens: int, eos_token_ids: Sequence[int], draft_backend: BaseBackend | None = None) -> None:
        from trtkv.runtime.backends import create_backend

        manifest = Manifest.load(model_dir, require_onnx=backend.backend != "tensorrt")
        check_compatible(model_dir, manifest, target_model_dir, target)
        if draft_backend is None:
            block_size = manifest.block_size
            config = replace(backend, kv_dtype="auto", kv_scales="auto", num_blocks=ceil_div(num_tokens, block_size) + 1,
                             block_size=block_size, num_host_blocks=0)
            draft_backend = create_backend(str(model_dir), config, manifest)
        self.backend = draft_backend
        self.kv = KVCacheManager(draft_backend.num_blocks, draft_backend.block_size)
        self.sampler = Sampler(eos_token_ids)
        self._fed: dict[int, list[int]] = {}  # per sequence: the tokens whose K/V the draft pool holds

    def propose(self, slots: Sequence[DraftSlot]) -> dict[int, Draft]:
        live = {s.seq_id for s in slots}
        for seq_id in [i for i in self._fed if i not in live]:
            self._forget(seq_id)
        feeds: list[tuple[DraftSlot, list[int]]] = []
        for slot in slots:
            if slot.max_tokens <= 0:
                continue
            new = self._catch_up(slot)
            if new is not None:
                feeds.append((slot, new))
        feeds = self._prefill(feeds)
        tokens: dict[int, list[int]] = {s.seq_id: [] for s, _ in feeds}
        probs: dict[int, list[np.ndarray | None]] = {s.seq_id: [] for s, _ in feeds}
        while feeds:  # one packed draft step per draft position
            following = []
            for (slot, _), (token, p) in zip(feeds, self._step(feeds), strict=True):
                tokens[slot.seq_id].append(token)
                probs[slot.seq_id].append(p)
                if len(tokens[slot.seq_id]) < slot.max_tokens and self._grow(slot.seq_id):
                    following.append((slot, [token]))
            feeds = following
        out = {}
        for seq_id, ids in tokens.items():
            if not ids:
                continue
            ps = probs[seq_id]
            out[seq_id] = Draft(tuple(ids), None if ps[0] is None else np.stack(ps))  # type: ignore[arg-type]
        return out

    def _catch_up(self, slot: DraftSlot) -> list[int] | None:
        """Roll the draft's KV back to what it shares with the sequence and allocate for
        the rest; the tokens to feed (None: no room, the sequence gets no draft)."""
        seq_id, target = slot.seq_id, slot.token_ids
        fed = self._fed.setdefault(seq_id, [])
        valid = 0
        limit = min(len(fed), len(target) - 1)  # the last token is always fed: its logits start the draft
        while valid < limit and fed[valid] == target[valid]:
            valid += 1
        if self.kv.has_seq(seq_id) and valid < len(fed):
            self.kv.truncate(seq_id, valid)
        del fed[valid:]
        new = list(target[valid:])
        if self.kv.try_allocate(seq_id, len(target)) is None:
            self._forget(seq_id)
            return None
        return new

    def _prefill(self, feeds: list[tuple[DraftSlot, list[int]]]) -> list[tuple[DraftSlot, list[int]]]:
        """Feed all but the last unseen token of each sequence in chunks that fit the draft
        backend's step (a TensorRT engine's max tokens), without logits; what is left to
        feed is one token per sequence."""
        cap = int(getattr(self.backend, "max_num_tokens", 0) or _MAX_CHUNK_TOKENS)
        pending = [(slot, new[:-1]) for slot, new in feeds if len(new) > 1]
        while pending:
            seqs, budget, rest = [], cap, []
            for slot, todo in pending:
                take = todo[:budget]
                if take:
                    seqs.append(self._feed(slot.seq_id, take, sample=False))
                    budget -= len(take)
                if len(take) < len(todo):
                    rest.append((slot, todo[len(take):]))
            self.backend.execute(StepPlan(seqs=tuple(seqs)))
            pending = rest
        return [(slot, new[-1:]) for slot, new in feeds]

    def _feed(self, seq_id: int, tokens: list[int], *, sample: bool) -> ScheduledSeq:
        """The draft step's share for ``tokens`` of a sequence (its blocks allocated); they
        count as fed from here on."""
        fed = self._fed[seq_id]
        scheduled = ScheduledSeq(seq_id, tuple(tokens), len(fed), self.kv.block_ids(seq_id), sample)
        fed.extend(tokens)
        return scheduled

    def _grow(self, seq_id: int) -> bool:
        """Room for one more token (the one just drawn); False: the draft stops here."""
        return self.kv.try_allocate(seq_id, len(self._fed[seq_id]) + 1) is not None

    def _step(self, feeds: list[tuple[DraftSlot, list[int]]]) -> list[tuple[int, np.ndarray | None]]:
        seqs = [self._feed(slot.seq_id, new, sample=True) for slot, new in feeds]
        logits = self.backend.execute(StepPlan(seqs=tuple(seqs)))
        rows = [SampleRow(_draft_params(slot), (), (), [slot.generator]) for slot, _ in feeds]
        return self.sampler.draw(logits, rows)

    def _forget(self, seq_id: int) -> None:
        if self.kv.has_seq(seq_id):
            self.kv.free(seq_id)
        self._fed.pop(seq_id, None)

    @property
    def num_seqs(self) -> int:
        """Sequences whose K/V the draft pool holds."""
        return len(self._fed)

    def close(self) -> None:
        for seq_id in list(self._fed):
            self._forget(seq_id)


def _draft_params(slot: DraftSlot) -> SamplingParams:
    """The request's distribution shape (temperature, top-k/p, min-p) without what reads the
    output history: any draft distribution is exact under rejection sampling."""
    p = slot.params
    if p.is_greedy or (p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty
                       and not p.min_tokens and p.logprobs is None):
        return p
    return replace(p, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_tokens=0,
                   logprobs=None)


def check_compatible(model_dir: Path, draft: Manifest, target_dir: Path, target: Manifest) -> None:
    """The draft proposes token ids the target reads as the same tokens.

    Raises:
        ConfigError: vocabulary sizes or tokenizers differ.
    """
    if draft.vocab_size != target.vocab_size:
        raise ConfigError(f"--draft-model {model_dir} has a vocabulary of {draft.vocab_size} tokens, the target "
                          f"{target.vocab_size}: the draft must share the target's tokenizer")
    ours, theirs = _vocab(model_dir), _vocab(target_dir)
    if ours is not None and theirs is not None and ours != theirs:
        raise ConfigError(f"--draft-model {model_dir} has another tokenizer than the target (the token ids mean "
                          "different text): pick a draft exported from the same model family")


def _vocab(model_dir: Path) -> dict[str, int] | None:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)  # type: ignore[no-any-return]
