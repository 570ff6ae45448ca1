"""Test doubles for the scheduler and KV manager (importable: `from tests.runtime.sim import ...`):
a paged pool that stores token ids.

`FakePool` executes a `StepPlan` the way a backend must (swap out, swap in, block copies,
then write each new token into its slot) and "samples" from what it reads back through the
block table. A wrong block table, a missed copy-on-write or a lost swap therefore changes the
sampled tokens, and the outputs stop matching `reference_outputs`, which computes the same
fake model without any scheduler.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.plan import StepPlan, StopRule
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig

EOS_MODULUS = 53


def fake_next_token(context: Sequence[int], branch: int = 0) -> int:
    """The fake model: a deterministic function of the whole context (and the fork branch)."""
    h = 7 + 1009 * branch
    for t in context:
        h = (h * 31 + t + 1) % 1_000_003
    return h % 1000


def is_eos(token: int) -> bool:
    return token % EOS_MODULUS == 0


EOS_RULE = StopRule(frozenset(t for t in range(1000) if is_eos(t)))
"""The fake model's EOS ids, as the scheduler's stop rule."""


def reference_outputs(prompt: Sequence[int], max_new_tokens: int, n: int) -> list[tuple[int, ...]]:
    """Outputs of the fake model, sorted: branch i starts with token f(prompt, i)."""
    outs = []
    for branch in range(n):
        ctx = list(prompt)
        out: list[int] = []
        while True:
            token = fake_next_token(ctx, branch if not out else 0)
            out.append(token)
            ctx.append(token)
            if len(out) >= max_new_tokens or is_eos(token):
                break
        outs.append(tuple(out))
    return sorted(outs)


class FakePool:
    """A paged pool of token ids standing in for a model backend's KV cache."""

    def __init__(self, num_blocks: int, num_host_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.device: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.host: list[list[int | None]] = [[None] * block_size for _ in range(num_host_blocks)]

    def apply_moves(self, plan: StepPlan) -> None:
        for dev, host in plan.swap_out:
            self.host[host] = list(self.device[dev])
        for host, dev in plan.swap_in:
            self.device[dev] = list(self.host[host])
        # Gather every source before writing any destination, as a batched copy would.
        data = [list(self.device[src]) for src, _ in plan.block_copies]
        for (_, dst), blk in zip(plan.block_copies, data, strict=True):
            self.device[dst] = blk

    def run(self, plan: StepPlan) -> dict[int, list[int]]:
        """Apply the plan; return the context each sampling sequence reads back."""
        self.apply_moves(plan)
        bs = self.block_size
        for s in plan.seqs:
            assert len(s.block_ids) * bs >= s.start_pos + s.num_tokens, "block table too short"
            for i, token in enumerate(s.token_ids):
                pos = s.start_pos + i
                self.device[s.block_ids[pos // bs]][pos % bs] = token
        contexts = {}
        for s in plan.seqs:
            if s.sample:
                end = s.start_pos + s.num_tokens
                ctx = [self.device[s.block_ids[p // bs]][p % bs] for p in range(end)]
                assert None not in ctx, f"seq {s.seq_id} reads a never-written slot"
                contexts[s.seq_id] = [t for t in ctx if t is not None]
        return contexts


@dataclass
class SimResult:
    outputs: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    aborted: set[str] = field(default_factory=set)
    plans: list[StepPlan] = field(default_factory=list)
    num_mixed_steps: int = 0
    """Plans holding both decodes and prefill chunks."""

    def assert_completed_match_reference(self, reqs: Sequence[SimRequest]) -> None:
        """Every request that was neither aborted nor rejected produced the reference outputs."""
        for r in reqs:
            if r.request_id not in self.aborted and r.request_id not in self.rejected:
                want = reference_outputs(r.prompt, r.max_new_tokens, r.n)
                assert sorted(self.outputs[r.request_id]) == want, r.request_id


def _is_decode(sched: Scheduler, seq_id: int) -> bool:
    view = sched.get_seq(seq_id)
    num_tokens = len(view.prompt_ids) + len(view.output_ids)
    return bool(view.output_ids) and num_tokens - view.num_computed == 1


@dataclass
class SimRequest:
    request_id: str
    prompt: list[int]
    max_new_tokens: int
    n: int = 1
    priority: int = 0
    arrive_step: int = 0
    abort_step: int | None = None
    cache_salt: str | None = None


def run_sim(
    requests: Sequence[SimRequest],
    config: SchedulerConfig,
    num_blocks: int,
    block_size: int,
    num_host_blocks: int = 0,
    check_every_step: bool = True,
    max_steps: int = 20_000,
    prefix_caching: bool = False,
) -> tuple[SimResult, Scheduler]:
    """Drive a scheduler with a fake engine loop until every request is done."""
    kv = KVCacheManager(num_blocks, block_size, num_host_blocks,
                        enable_prefix_caching=prefix_caching)
    sched = Scheduler(config, kv)
    pool = FakePool(num_blocks, num_host_blocks, block_size)
    res = SimResult()
    n_of: dict[str, int] = {}
    max_new_of: dict[str, int] = {}
    pending = sorted(requests, key=lambda r: r.arrive_step)
    step = 0
    while pending or sched.has_unfinished():
        assert step < max_steps, "the scheduler made no progress"
        while pending and pending[0].arrive_step <= step:
            r = pending.pop(0)
            try:
                sched.add_request(r.request_id, r.prompt, r.max_new_tokens, priority=r.priority,
                                  arrival_time=float(step), cache_salt=r.cache_salt, stop=EOS_RULE)
                n_of[r.request_id] = r.n
                max_new_of[r.request_id] = r.max_new_tokens
                res.outputs[r.request_id] = []
            except Exception as e:  # noqa: BLE001 - the reason is recorded and checked
                res.rejected[r.request_id] = getattr(e, "reason", repr(e))
        for r in requests:
            if r.abort_step == step and r.request_id in res.outputs:
                if sched.abort_request(r.request_id):
                    res.aborted.add(r.request_id)
                if check_every_step:
                    sched.check_integrity()
        plan = sched.schedule()
        res.plans.append(plan)
        assert plan.num_tokens <= config.max_num_batched_tokens, "token budget exceeded"
        assert len(plan.seqs) <= config.max_num_seqs, "sequence budget exceeded"
        kinds = [_is_decode(sched, q.seq_id) for q in plan.seqs]
        assert kinds == sorted(kinds, reverse=True), "a prefill chunk precedes a decode"
        res.num_mixed_steps += 0 < sum(kinds) < len(kinds)
        if check_every_step:
            sched.check_integrity()
        contexts = pool.run(plan)
        sampled = {}
        before = {}  # outputs before this step's token, of each sampling sequence
        for seq_id, ctx in contexts.items():
            view = sched.get_seq(seq_id)
            before[seq_id] = view.output_ids
            k = n_of[view.request_id] if not view.output_ids else 1
            sampled[seq_id] = [fake_next_token(ctx, b if not view.output_ids else 0) for b in range(k)]
        updates = sched.update(plan, sampled)
        if check_every_step:
            sched.check_integrity()
        assert [u.token_id for u in updates] == [t for ts in sampled.values() for t in ts]
        for u in updates:  # the scheduler's StopRule ended (and freed) the finished ones
            output = (*before[u.parent_seq_id if u.parent_seq_id is not None else u.seq_id], u.token_id)
            want = "stop" if is_eos(u.token_id) else "length" if len(output) == max_new_of[u.request_id] else None
            assert u.finish_reason == want, u
            if want is not None:
                assert not sched.kv.has_seq(u.seq_id), f"finished seq {u.seq_id} holds blocks"
                res.outputs[u.request_id].append(output)
        if check_every_step:
            sched.check_integrity()
        step += 1
    sched.check_integrity()
    return res, sched


def random_requests(rng: random.Random, num: int, max_prompt: int, max_new: int,
                    max_n: int = 1, num_priorities: int = 1, spread: int = 10,
                    abort_prob: float = 0.0, num_shared_prefixes: int = 0,
                    num_salts: int = 0) -> list[SimRequest]:
    """Random requests; with ``num_shared_prefixes`` most prompts start with a common prefix."""
    prefixes = [[rng.randrange(1000) for _ in range(rng.randint(1, max_prompt))]
                for _ in range(num_shared_prefixes)]
    reqs = []
    for i in range(num):
        arrive = rng.randrange(spread)
        prompt = [rng.randrange(1000) for _ in range(rng.randint(1, max_prompt))]
        if prefixes and rng.random() < 0.8:
            prompt = (rng.choice(prefixes) + prompt)[:max_prompt]
        reqs.append(SimRequest(
            request_id=f"r{i}",
            prompt=prompt,
            cache_salt=f"s{rng.randrange(num_salts)}" if num_salts else None,
            max_new_tokens=rng.randint(1, max_new), n=rng.randint(1, max_n),
            priority=rng.randrange(num_priorities), arrive_step=arrive,
            abort_step=arrive + rng.randrange(30) if rng.random() < abort_prob else None,
        ))
    return reqs
