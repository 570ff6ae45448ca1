"""Preemption (recompute, swap, fallback), victim choice, forks and copy-on-write."""

from __future__ import annotations

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.plan import StepPlan
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig, SeqStatus


def make(num_blocks: int, num_host_blocks: int = 0, mode: str = "recompute",
         **cfg: object) -> Scheduler:
    config = SchedulerConfig(max_model_len=64, preemption_mode=mode, **cfg)  # type: ignore[arg-type]
    return Scheduler(config, KVCacheManager(num_blocks, 4, num_host_blocks))


def step(s: Scheduler, tokens: dict[int, list[int]] | None = None) -> StepPlan:
    plan = s.schedule()
    s.check_integrity()
    tokens = tokens or {}
    s.update(plan, {q.seq_id: tokens.get(q.seq_id, [q.seq_id + 100]) for q in plan.seqs if q.sample})
    s.check_integrity()
    return plan


def three_full(mode: str = "recompute", num_host_blocks: int = 0) -> tuple[Scheduler, int, int, int]:
    """A (priority 0), B, C (priority 1, C later) fill a 6-block pool; all need a block next."""
    s = make(6, num_host_blocks, mode)
    a = s.add_request("A", [1] * 7, 10, priority=0, arrival_time=2.0)
    b = s.add_request("B", [2] * 7, 10, priority=1, arrival_time=0.0)
    c = s.add_request("C", [3] * 7, 10, priority=1, arrival_time=1.0)
    step(s)
    step(s)
    assert s.kv.usage().num_free == 0
    return s, a, b, c


def test_recompute_preempts_lowest_priority_latest_arrival() -> None:
    s, a, b, c = three_full()
    plan = step(s)
    assert plan.preempted_seq_ids == (c,)
    assert [q.seq_id for q in plan.seqs] == [a, b]
    view = s.get_seq(c)
    assert view.status is SeqStatus.WAITING and view.num_computed == 0
    assert view.output_ids == (c + 100, c + 100) and view.num_preemptions == 1
    assert s.stats().num_preemptions_recompute == 1 and s.stats().num_preemptions == 1


def test_recompute_resumes_with_prompt_and_generated_tokens() -> None:
    s, a, b, c = three_full()
    step(s)
    s.finish(a)
    s.finish(b)
    plan = step(s, {c: [55]})
    (q,) = plan.seqs
    assert q.seq_id == c and q.start_pos == 0 and q.sample
    assert q.token_ids == (3,) * 7 + (c + 100, c + 100)
    assert s.get_seq(c).output_ids == (c + 100, c + 100, 55)
    (q,) = step(s).seqs
    assert (q.token_ids, q.start_pos) == ((55,), 9)


def test_swap_out_then_swap_in() -> None:
    s, a, b, c = three_full("swap", num_host_blocks=4)
    table = s.kv.block_ids(c)
    out = step(s)
    assert out.preempted_seq_ids == (c,) and out.swap_in == ()
    assert [d for d, _ in out.swap_out] == list(table)
    assert s.get_seq(c).status is SeqStatus.SWAPPED and s.num_swapped == 1
    assert s.get_seq(c).num_computed == 8
    s.finish(a)
    back = step(s)
    assert [h for h, _ in back.swap_in] == [h for _, h in out.swap_out]
    assert s.kv.block_ids(c)[:2] == tuple(d for _, d in back.swap_in)
    q = next(q for q in back.seqs if q.seq_id == c)
    assert (q.token_ids, q.start_pos) == ((c + 100,), 8), "continues as a decode"
    assert s.stats().num_preemptions_swap == 1 and s.num_swapped == 0


def test_swap_falls_back_to_recompute_when_host_is_full() -> None:
    s, a, b, c = three_full("swap", num_host_blocks=1)
    plan = step(s)
    assert plan.preempted_seq_ids == (c,) and plan.swap_out == ()
    assert s.get_seq(c).status is SeqStatus.WAITING
    assert s.stats().num_preemptions_recompute == 1 and s.stats().num_preemptions_swap == 0


def test_a_decode_preempts_itself_when_it_ranks_last() -> None:
    s = make(4)
    a = s.add_request("A", [1] * 7, 6, priority=0)
    b = s.add_request("B", [2] * 8, 5, priority=1)
    step(s)  # 4 blocks used; A's next slot (7) is in its last block, B's (8) is not
    plan = step(s)
    assert plan.preempted_seq_ids == (b,)
    assert [q.seq_id for q in plan.seqs] == [a]
    assert s.get_seq(b).status is SeqStatus.WAITING


def test_a_prefill_chunk_waits_rather_than_preempt_a_better_sequence() -> None:
    s = make(4, max_num_batched_tokens=4, max_num_seqs=2)
    a = s.add_request("A", [1] * 3, 8, priority=0)
    step(s)
    b = s.add_request("B", [2] * 12, 2, priority=1)
    step(s)
    step(s)  # pool full: A holds 2 blocks, B 2 blocks with 6 tokens computed
    assert s.kv.usage().num_free == 0 and s.get_seq(b).num_computed == 6
    for _ in range(3):  # A decodes inside its block; B's chunk cannot grow
        plan = step(s)
        assert [q.seq_id for q in plan.seqs] == [a] and plan.preempted_seq_ids == ()
        assert s.get_seq(b).status is SeqStatus.RUNNING and s.get_seq(b).num_computed == 6
    plan = step(s)  # A needs a block: B, ranked last and unscheduled, is the victim
    assert plan.preempted_seq_ids == (b,) and [q.seq_id for q in plan.seqs] == [a]


def test_fork_shares_blocks_then_copies_on_write() -> None:
    s = make(16)
    p = s.add_request("n3", [1, 2, 3, 4, 5, 6], 5)
    plan = s.schedule()
    updates = s.update(plan, {p: [10, 11, 12]})
    assert [(u.token_id, u.parent_seq_id, u.sample_index) for u in updates] == [
        (10, None, 0), (11, p, 1), (12, p, 2)]
    children = [u.seq_id for u in updates[1:]]
    assert len(children) == 2
    assert {s.get_seq(c).request_id for c in children} == {"n3"}
    assert [s.get_seq(c).output_ids for c in children] == [(11,), (12,)]
    table = s.kv.block_ids(p)
    assert all(s.kv.block_ids(c) == table for c in children)
    assert [s.kv.ref_count(b) for b in table] == [3, 3]
    s.check_integrity()
    plan = step(s)
    assert len(plan.block_copies) == 2, "two of three writers copy the shared partial block"
    assert {src for src, _ in plan.block_copies} == {table[1]}
    assert sorted(s.abort_request("n3")) == sorted([p, *children])
    assert s.kv.usage().num_used == 0


def test_abort_a_swapped_request_frees_host_blocks() -> None:
    s, a, b, c = three_full("swap", num_host_blocks=4)
    step(s)
    assert s.kv.usage().num_host_used == 2
    assert s.abort_request("C") == [c]
    assert s.kv.usage().num_host_used == 0 and s.num_swapped == 0
    s.check_integrity()
