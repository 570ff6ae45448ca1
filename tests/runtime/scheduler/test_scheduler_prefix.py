"""Prefix caching through the scheduler: admission reuses cached blocks, outputs unchanged."""

from __future__ import annotations

import random
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.plan import StepPlan
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig


def make(caching: bool = True, num_blocks: int = 32, **cfg: object) -> Scheduler:
    config = SchedulerConfig(max_model_len=64, **cfg)  # type: ignore[arg-type]
    return Scheduler(config, KVCacheManager(num_blocks, 4, enable_prefix_caching=caching))


def step(s: Scheduler) -> StepPlan:
    plan = s.schedule()
    s.update(plan, {q.seq_id: [9] for q in plan.seqs if q.sample})
    s.check_integrity()
    return plan


PROMPT = list(range(1, 11))  # 10 tokens: 2 full blocks


def test_second_request_starts_after_the_cached_blocks() -> None:
    s = make()
    a = s.add_request("a", PROMPT, 3)
    step(s)
    b = s.add_request("b", PROMPT + [77], 3)
    (q,) = [q for q in step(s).seqs if q.seq_id == b]
    assert (q.start_pos, q.token_ids) == (8, (9, 10, 77))
    assert q.block_ids[:2] == s.kv.block_ids(a)[:2]
    assert s.get_seq(b).num_cached_tokens == 8 and s.get_seq(a).num_cached_tokens == 0
    st_ = s.stats()
    assert (st_.num_prefix_queries, st_.num_prefix_query_tokens, st_.num_prefix_hit_tokens) == (
        2, 21, 8)
    assert abs(st_.prefix_hit_rate - 8 / 21) < 1e-9


def test_hits_survive_finish_and_the_last_token_is_always_computed() -> None:
    s = make()
    a = s.add_request("a", PROMPT[:8], 3)
    step(s)
    s.finish(a)
    b = s.add_request("b", PROMPT[:8], 3)
    (q,) = step(s).seqs
    assert (q.seq_id, q.start_pos, q.token_ids, q.sample) == (b, 4, (5, 6, 7, 8), True)


def test_salts_separate_caches() -> None:
    s = make()
    s.add_request("a", PROMPT, 3, cache_salt="tenant-1")
    step(s)
    b = s.add_request("b", PROMPT, 3, cache_salt="tenant-2")
    c = s.add_request("c", PROMPT, 3, cache_salt="tenant-1")
    starts = {q.seq_id: q.start_pos for q in step(s).seqs}
    assert starts[b] == 0 and starts[c] == 8


def test_caching_off_computes_everything() -> None:
    s = make(caching=False)
    s.add_request("a", PROMPT, 3)
    step(s)
    b = s.add_request("b", PROMPT, 3)
    starts = {q.seq_id: q.start_pos for q in step(s).seqs}
    assert starts[b] == 0 and s.get_seq(b).num_cached_tokens == 0
    st_ = s.stats()
    assert (st_.num_prefix_queries, st_.num_prefix_hit_tokens, st_.kv.num_cached) == (0, 0, 0)


def test_recompute_resumes_from_its_own_cached_blocks() -> None:
    s = make(num_blocks=6)
    a = s.add_request("A", [1] * 7, 10, priority=0)
    b = s.add_request("B", [2] * 6, 10, priority=1, arrival_time=0.0)
    c = s.add_request("C", [3] * 7, 10, priority=1, arrival_time=1.0)
    step(s)
    step(s)
    # A needs a block: C is preempted, its 2 cached blocks freed last block first, and A's
    # new block evicts only C's second block.
    assert step(s).preempted_seq_ids == (c,)
    assert s.stats().kv.num_evictions == 1
    s.finish(a)
    s.finish(b)
    (q,) = step(s).seqs
    assert (q.seq_id, q.start_pos) == (c, 4) and s.get_seq(c).num_cached_tokens == 4
    assert q.token_ids == (3, 3, 3, 9, 9)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["recompute", "swap"]),
       num_blocks=st.integers(12, 40))
def test_outputs_with_prefix_caching_match_reference(
    simkit: SimpleNamespace, seed: int, mode: str, num_blocks: int
) -> None:
    rng = random.Random(seed)
    reqs = simkit.random_requests(rng, 20, max_prompt=30, max_new=12, max_n=3,
                                  num_priorities=2, spread=20, abort_prob=0.1,
                                  num_shared_prefixes=2, num_salts=2)
    config = SchedulerConfig(max_model_len=48, max_num_seqs=6, max_num_batched_tokens=16,
                             preemption_mode=mode)
    res, sched = simkit.run_sim(reqs, config, num_blocks=num_blocks, block_size=2,
                                num_host_blocks=8, prefix_caching=True)
    res.assert_completed_match_reference(reqs)
    usage = sched.kv.usage()
    assert usage.num_used == 0 and usage.num_host_used == 0
    # Whether a random workload on a tiny pool hits at all depends on evictions; that hits
    # happen (and change the work done) is asserted by the deterministic test below. Every
    # admitted request looked the cache up at least once (re-admissions after preemption again).
    admitted = [r for r in reqs if r.request_id not in res.rejected]
    assert sched.stats().num_prefix_queries >= len(admitted) - len(res.aborted)


def test_caching_on_and_off_give_the_same_outputs(simkit: SimpleNamespace) -> None:
    rng = random.Random(7)
    reqs = simkit.random_requests(rng, 24, max_prompt=30, max_new=12, max_n=2, spread=30,
                                  num_shared_prefixes=3)
    config = SchedulerConfig(max_model_len=48, max_num_seqs=6, max_num_batched_tokens=16)
    off, s_off = simkit.run_sim(reqs, config, num_blocks=24, block_size=2)
    on, s_on = simkit.run_sim(reqs, config, num_blocks=24, block_size=2, prefix_caching=True)
    assert {r: sorted(o) for r, o in on.outputs.items()} == {
        r: sorted(o) for r, o in off.outputs.items()}
    assert s_on.stats().num_prefix_hit_tokens > 0 and s_on.stats().num_prefix_evictions > 0
    assert s_off.stats().num_prefix_queries == 0
    assert sum(p.num_tokens for p in on.plans) < sum(p.num_tokens for p in off.plans)
