"""The scheduler's side of speculative decoding, on the fake paged pool (`tests.runtime.sim`):
drafts fit the token budget and free blocks, rejected tokens are rolled back (their slots and
the blocks past them freed, never published to the prefix cache), outputs equal the
unspeculated reference, and the KV invariants hold after every step."""

from __future__ import annotations

import random

import pytest

from tests.runtime.sim import (
    EOS_RULE,
    FakePool,
    SimRequest,
    fake_next_token,
    is_eos,
    reference_outputs,
)
from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig


def _draft(rng: random.Random, ctx: list[int], k: int) -> list[int]:
    """A draft right for a random number of tokens, then wrong."""
    right = rng.randint(0, k)
    out, c = [], list(ctx)
    for j in range(k):
        t = fake_next_token(c)
        if j >= right:
            t = (t + 1 + rng.randrange(998)) % 1000  # never the right token
        out.append(t)
        c.append(t)
    return out


def run_spec_sim(requests, config, num_blocks, block_size, *, k, seed, num_host_blocks=0, prefix_caching=False):
    rng = random.Random(seed)
    kv = KVCacheManager(num_blocks, block_size, num_host_blocks, enable_prefix_caching=prefix_caching)
    sched = Scheduler(config, kv)
    pool = FakePool(num_blocks, num_host_blocks, block_size)
    outputs: dict[str, list[int]] = {}
    pending = sorted(requests, key=lambda r: r.arrive_step)
    step = drafted = accepted = 0
    while pending or sched.has_unfinished():
        assert step < 5000
        while pending and pending[0].arrive_step <= step:
            r = pending.pop(0)
            sched.add_request(r.request_id, r.prompt, r.max_new_tokens, arrival_time=float(step),
                              cache_salt=r.cache_salt, stop=EOS_RULE)
            outputs[r.request_id] = []
        drafts = {}
        for seq_id, _, token_ids, room in sched.decoding_seqs():
            if room > 0 and rng.random() < 0.8:
                drafts[seq_id] = _draft(rng, token_ids, rng.randint(1, k))
        plan = sched.schedule(drafts)
        assert plan.num_tokens <= config.max_num_batched_tokens
        sched.check_integrity()
        contexts = pool.run(plan)
        sampled = {}
        for s in plan.seqs:
            if not s.sample:
                continue
            ctx = contexts[s.seq_id]
            assert s.num_draft <= len(drafts.get(s.seq_id, ()))
            if s.num_draft:
                assert list(s.token_ids[1:]) == drafts[s.seq_id][: s.num_draft]
            tokens = []
            base = s.start_pos + s.num_tokens - s.num_draft
            for j in range(s.num_draft + 1):
                true = fake_next_token(ctx[: base + j])
                tokens.append(true)
                if j == s.num_draft or s.token_ids[1 + j] != true:
                    break
            drafted += s.num_draft
            accepted += len(tokens) - 1
            sampled[s.seq_id] = tokens
        updates = sched.update(plan, sampled)
        sched.check_integrity()
        for u in updates:
            outputs[u.request_id].append(u.token_id)
            if u.finish_reason is not None:
                assert not sched.kv.has_seq(u.seq_id)
                assert u.finish_reason == ("stop" if is_eos(u.token_id) else "length")
        for seq_id, _, token_ids, _ in sched.decoding_seqs():  # rolled back: the table holds what was kept
            assert kv.num_tokens(seq_id) == len(token_ids) - 1
            assert len(kv.block_ids(seq_id)) == kv.num_blocks_for(len(token_ids) - 1)
        step += 1
    assert kv.usage().num_used == 0 or prefix_caching
    for r in requests:
        assert [tuple(outputs[r.request_id])] == reference_outputs(r.prompt, r.max_new_tokens, 1), r.request_id
    return sched, drafted, accepted


def _requests(seed: int, num: int, shared: bool = False):
    rng = random.Random(seed)
    common = [rng.randrange(1000) for _ in range(11)]
    reqs = []
    for i in range(num):
        prompt = [rng.randrange(1000) for _ in range(rng.randint(1, 30))]
        reqs.append(SimRequest(f"r{i}", (common + prompt) if shared else prompt, rng.randint(1, 40),
                               arrive_step=rng.randint(0, 30)))
    return reqs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["roomy", "pressure-recompute", "pressure-swap", "tiny-budget", "prefix"])
def test_spec_sim_matches_reference(mode, seed):
    kw = dict(num_blocks=200, block_size=4)
    cfg = dict(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    if mode.startswith("pressure"):
        kw["num_blocks"] = 20
        if mode == "pressure-swap":
            cfg["preemption_mode"] = "swap"
            kw["num_host_blocks"] = 64
    if mode == "tiny-budget":
        cfg.update(max_num_batched_tokens=6, max_num_seqs=4)
    sched, drafted, accepted = run_spec_sim(_requests(seed, 12, shared=mode == "prefix"), SchedulerConfig(**cfg),
                                            k=5, seed=seed, prefix_caching=mode == "prefix", **kw)
    assert drafted > accepted > 0
    if mode.startswith("pressure"):
        assert sched.stats().num_preemptions > 0
    if mode == "prefix":
        assert sched.stats().num_prefix_hit_tokens > 0


def test_drafts_fit_budget_and_remaining_tokens():
    kv = KVCacheManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=128), kv)
    for i in range(3):
        sched.add_request(f"r{i}", [1, 2], 4)
    plan = sched.schedule()
    sched.update(plan, {s.seq_id: [5] for s in plan.seqs})  # every prompt done: three decodes next
    plan = sched.schedule({0: [9] * 10, 1: [9] * 10, 2: [9] * 10})
    # 3 decode tokens first, then 5 of budget left for drafts, each at most max_new_tokens - 1 - 1 = 2
    assert [s.num_draft for s in plan.seqs] == [2, 2, 1]
    assert plan.num_tokens == 8
    updates = sched.update(plan, {0: [9, 9, 7], 1: [4], 2: [9, 3]})
    assert [(u.seq_id, u.token_id) for u in updates] == [(0, 9), (0, 9), (0, 7), (1, 4), (2, 9), (2, 3)]
    assert [u.finish_reason for u in updates] == [None, None, "length", None, None, None]
    assert not kv.has_seq(0) and kv.num_tokens(1) == 3 and kv.num_tokens(2) == 4
    sched.check_integrity()


def test_update_refuses_tokens_that_are_not_an_accepted_prefix():
    kv = KVCacheManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=128), kv)
    sched.add_request("r", [1, 2, 3], 10)
    plan = sched.schedule()
    sched.update(plan, {0: [5]})
    plan = sched.schedule({0: [6, 7, 8]})
    with pytest.raises(ValueError, match="not an accepted prefix"):
        sched.update(plan, {0: [6, 8, 1]})
    with pytest.raises(ValueError, match="not an accepted prefix"):
        sched.update(plan, {0: [6, 7, 8, 1, 2]})
    with pytest.raises(ValueError, match="not an accepted prefix"):
        sched.update(plan, {0: []})  # a drafted sequence cannot be held
    sched.update(plan, {0: [6, 7, 8, 1]})  # nothing changed by the refused calls
    assert kv.num_tokens(0) == 7


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_held_beams_never_deadlock_their_siblings(mode):
    """Beams held for their siblings in a pool too small for all of them: an idle held beam is
    preempted to make room for a sibling that must still compute its row, and a preempted
    held beam is not brought back before it is extended (swapped, it would have nothing to
    compute and block admission). Every round completes and the pool drains."""
    kv = KVCacheManager(7, 4, num_host_blocks=64)
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64,
                                      preemption_mode=mode), kv)
    other = sched.add_request("other", [1, 2, 3], 12, priority=-1)  # ranks above the beams: preempts them
    beams, rows, rounds = {sched.add_request("beam", [5, 6, 7], 12, n=2)}, set(), 0
    for _ in range(400):
        if not sched.has_unfinished():
            break
        plan = sched.schedule()
        sampled = {}
        for s in plan.seqs:
            if s.sample:
                if s.seq_id in beams:
                    sampled[s.seq_id] = []  # held until every beam has its row
                    rows.add(s.seq_id)
                else:
                    sampled[s.seq_id] = [9]
        sched.update(plan, sampled)
        sched.check_integrity()
        if beams and rows == beams:  # a round: the first forks in two, then each goes on
            tokens = [11, 12] if rounds == 0 else [13]
            beams = {u.seq_id for b in sorted(beams) for u in sched.extend(b, tokens) if u.finish_reason is None}
            rows, rounds = set(), rounds + 1
    assert not sched.has_unfinished() and other not in sched._reg.seqs
    assert rounds >= 10 and sched.stats().num_preemptions > 0
    assert kv.usage().num_used == 0


def test_text_stop_inside_an_accepted_draft_that_a_token_stop_also_ends():
    """A stop string matches at an accepted draft token and the step's last token ends the
    sequence by length too: the output stops at the string; nothing is freed twice."""
    import time

    from trtkv.runtime.metrics import EngineMetrics
    from trtkv.runtime.output_processor import OutputProcessor, RequestState
    from trtkv.runtime.plan import StopRule
    from trtkv.runtime.sampling import SampleResult, SamplingParams

    class Letters:  # token i is the letter i
        def decode(self, ids, skip_special_tokens=False, **kw):
            return "".join(chr(97 + i % 26) for i in ids)

    kv = KVCacheManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=128), kv)
    params = SamplingParams(max_new_tokens=4, stop=["c"])
    sid = sched.add_request("r", [1, 2, 3], 4, stop=StopRule())
    outputs = OutputProcessor(Letters(), (), None, EngineMetrics())
    outputs.add(RequestState("r", [1, 2, 3], params, time.monotonic()), sid)
    plan = sched.schedule()
    outputs.process(sched.update(plan, {sid: [0]}), {sid: SampleResult([0])}, time.monotonic(), sched.finish)
    plan = sched.schedule({sid: [1, 2, 3]})
    updates = sched.update(plan, {sid: [1, 2, 4]})  # b, c accepted; the 4th token ends it by length
    assert [u.finish_reason for u in updates] == [None, None, "length"]
    (out,) = outputs.process(updates, {sid: SampleResult([1, 2, 4])}, time.monotonic(), sched.finish)
    assert out.finished and out.outputs[0].text == "ab" and out.outputs[0].finish_reason == "stop"
    assert kv.usage().num_used == 0
