"""Scheduler unit tests: config, admission and refusals, budgets, chunking, priorities."""

from __future__ import annotations

import dataclasses

import pytest

from trtkv.errors import ConfigError, InvalidRequestError, RequestRejectedError
from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.plan import StepPlan, StopRule
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig, SeqStatus, field_help


def make(num_blocks: int = 64, block_size: int = 4, num_host_blocks: int = 0,
         **cfg: object) -> Scheduler:
    cfg.setdefault("max_model_len", 64)
    config = SchedulerConfig(**cfg)  # type: ignore[arg-type]
    return Scheduler(config, KVCacheManager(num_blocks, block_size, num_host_blocks))


def step(s: Scheduler, token: int = 7) -> StepPlan:
    """Schedule, then sample ``token`` for every sampling seq."""
    plan = s.schedule()
    s.update(plan, {q.seq_id: [token] for q in plan.seqs if q.sample})
    s.check_integrity()
    return plan


def test_config_defaults_help_and_validation() -> None:
    c = SchedulerConfig(max_model_len=128)
    assert (c.max_num_seqs, c.max_num_batched_tokens, c.max_num_queued_requests) == (64, 2048, 1024)
    assert c.enable_chunked_prefill and c.preemption_mode == "recompute"
    helps = field_help(SchedulerConfig)
    assert set(helps) == {f.name for f in dataclasses.fields(SchedulerConfig)}
    assert all(h and "\n" not in h for h in helps.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_num_seqs = 3  # type: ignore[misc]
    bad: list[dict[str, object]] = [
        {"max_model_len": 0}, {"max_model_len": 8, "max_num_seqs": 0},
        {"max_model_len": 8, "preemption_mode": "drop"},
        {"max_model_len": 8, "max_num_seqs": 16, "max_num_batched_tokens": 8},
        {"max_model_len": 4096, "enable_chunked_prefill": False},
        {"max_model_len": 8, "max_num_queued_requests": -1},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            SchedulerConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt_len", "max_new", "reason"),
    [(60, 5, "too_long"), (40, 10, "kv_capacity")],
)
def test_unserviceable_requests_are_rejected_without_change(
    prompt_len: int, max_new: int, reason: str
) -> None:
    s = make(num_blocks=12, block_size=4)  # 48 tokens of KV, max_model_len 64
    with pytest.raises(RequestRejectedError) as e:
        s.add_request("a", [1] * prompt_len, max_new)
    assert e.value.reason == reason and str(e.value)
    assert not s.has_unfinished() and s.num_waiting == 0
    assert s.stats().num_rejected[reason] == 1
    assert s.add_request("a", [1] * 4, 4) == 0, "a rejection consumes no seq id"


def test_queue_full_rejects_and_deferred_requests_wait() -> None:
    s = make(num_blocks=4, block_size=4, max_num_queued_requests=2)
    s.add_request("a", [1] * 12, 4)
    s.add_request("b", [1] * 12, 4)  # does not fit while "a" runs: deferred, not rejected
    with pytest.raises(RequestRejectedError) as e:
        s.add_request("c", [1], 1)
    assert e.value.reason == "queue_full"
    plan = step(s)
    assert [q.seq_id for q in plan.seqs] == [0] and s.num_waiting == 1
    s.add_request("c", [1], 1)  # room in the queue again
    assert s.stats().num_rejected == {"too_long": 0, "kv_capacity": 0, "too_many_seqs": 0, "queue_full": 1}


def test_invalid_requests() -> None:
    s = make()
    with pytest.raises(InvalidRequestError):
        s.add_request("a", [], 3)
    with pytest.raises(InvalidRequestError):
        s.add_request("a", [1], 0)
    s.add_request("a", [1], 1)
    with pytest.raises(InvalidRequestError, match="already in use"):
        s.add_request("a", [1], 1)


def test_prefill_then_decode_plan_contents() -> None:
    s = make(block_size=4)
    sid = s.add_request("a", [5, 6, 7, 8, 9], 3)
    plan = s.schedule()
    (q,) = plan.seqs
    assert (q.seq_id, q.token_ids, q.start_pos, q.sample) == (sid, (5, 6, 7, 8, 9), 0, True)
    assert q.block_ids == s.kv.block_ids(sid) and len(q.block_ids) == 2
    s.update(plan, {sid: [42]})
    (q,) = s.schedule().seqs
    assert (q.token_ids, q.start_pos, q.sample) == ((42,), 5, True)
    assert s.get_seq(sid).output_ids == (42,) and s.get_seq(sid).status is SeqStatus.RUNNING


def test_chunked_prefill_splits_and_samples_only_at_the_end() -> None:
    s = make(max_num_seqs=4, max_num_batched_tokens=4)
    sid = s.add_request("a", list(range(10)), 2)
    chunks = [step(s).seqs[0] for _ in range(3)]
    assert [c.token_ids for c in chunks] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [c.start_pos for c in chunks] == [0, 4, 8]
    assert [c.sample for c in chunks] == [False, False, True]
    assert s.get_seq(sid).output_ids == (7,)
    assert s.stats().num_chunked_prefills == 3


def test_without_chunking_a_long_prompt_waits_for_a_free_step() -> None:
    s = make(max_model_len=16, max_num_seqs=3, max_num_batched_tokens=16,
             enable_chunked_prefill=False)
    s.add_request("a", [1] * 4, 8)
    s.add_request("c", [1] * 4, 8)
    step(s)
    s.add_request("b", [2] * 15, 1)
    plan = step(s)  # "a" and "c" decode; "b" needs 15 > 14 tokens left, and is not split
    assert [q.num_tokens for q in plan.seqs] == [1, 1]
    assert s.num_waiting == 1 and s.stats().num_chunked_prefills == 0


def test_decodes_come_first_and_get_the_budget_first() -> None:
    s = make(max_num_seqs=4, max_num_batched_tokens=6)
    a = s.add_request("a", [1] * 3, 5)
    step(s)
    b = s.add_request("b", [2] * 20, 2)
    plan = step(s)
    assert [(q.seq_id, q.num_tokens) for q in plan.seqs] == [(a, 1), (b, 5)]
    plan = s.schedule()
    assert [q.seq_id for q in plan.seqs] == [a, b] and plan.seqs[0].num_tokens == 1


def test_priority_orders_admission_lower_number_first_then_arrival() -> None:
    s = make(max_num_seqs=1, max_num_batched_tokens=8)
    s.add_request("late-low", [1], 1, priority=1, arrival_time=0.0)
    s.add_request("high-2", [1], 1, priority=0, arrival_time=2.0)
    s.add_request("high-1", [1], 1, priority=0, arrival_time=1.0)
    order = []
    while s.has_unfinished():
        plan = step(s)  # max_new_tokens 1: each ends on its first token
        order += [q.request_id for q in plan.seqs]
    assert order == ["high-1", "high-2", "late-low"]


def test_max_num_seqs_limits_running() -> None:
    s = make(max_num_seqs=2, max_num_batched_tokens=64)
    for i in range(4):
        s.add_request(f"r{i}", [1, 2], 4)
    plan = step(s)
    assert len(plan.seqs) == 2 and s.num_running == 2 and s.num_waiting == 2


def test_schedule_and_update_protocol_errors() -> None:
    s = make()
    a = s.add_request("a", [1, 2], 3)
    plan = s.schedule()
    with pytest.raises(RuntimeError, match="update"):
        s.schedule()
    with pytest.raises(ValueError, match="missing"):
        s.update(plan, {})
    with pytest.raises(ValueError, match="unexpected"):
        s.update(plan, {a: [1], 99: [1]})
    assert s.get_seq(a).num_computed == 0, "a refused update changes nothing"
    s.update(plan, {a: [3]})
    with pytest.raises(RuntimeError):
        s.update(plan, {a: [3]})
    empty = make().schedule()
    assert empty.is_empty


def test_finish_and_abort_free_everything() -> None:
    s = make(max_num_batched_tokens=64)
    a = s.add_request("a", [1] * 6, 4)
    b = s.add_request("b", [1] * 6, 4)
    step(s)
    s.finish(a)
    with pytest.raises(KeyError):
        s.get_seq(a)
    with pytest.raises(KeyError):
        s.finish(a)
    assert s.abort_request("b") == [b] and s.abort_request("b") == []
    assert not s.has_unfinished() and s.kv.usage().num_used == 0
    s.check_integrity()


def test_abort_waiting_and_partially_prefilled() -> None:
    s = make(max_num_seqs=2, max_num_batched_tokens=4)
    a = s.add_request("a", [1] * 10, 4)
    b = s.add_request("b", [1] * 10, 4)
    step(s)
    assert s.get_seq(a).num_computed == 4 and s.get_seq(b).status is SeqStatus.WAITING
    assert s.abort_request("a") == [a]
    assert s.abort_request("b") == [b]
    assert s.kv.usage().num_used == 0 and not s.has_unfinished()
    s.check_integrity()


def test_abort_between_schedule_and_update() -> None:
    s = make()
    s.add_request("a", [1, 2], 3)
    b = s.add_request("b", [1, 2], 3)
    plan = s.schedule()
    s.abort_request("a")
    s.update(plan, {b: [5]})
    assert s.get_seq(b).output_ids == (5,)
    s.check_integrity()


def test_update_applies_the_stop_rule_and_frees_what_it_ends() -> None:
    """Token-id stops are decided once, in `update`: a stop id after min_tokens, or the
    max_new_tokens-th token; the ended sequence is freed and its update says why."""
    s = make(max_num_batched_tokens=64)
    a = s.add_request("a", [1, 2], 5, stop=StopRule(frozenset({9}), min_tokens=1))
    b = s.add_request("b", [1, 2], 2)
    s.update(plan := s.schedule(), {q.seq_id: [9] for q in plan.seqs})  # 9 at min_tokens: goes on
    ups = s.update(plan := s.schedule(), {a: [9], b: [4]})
    assert [(u.seq_id, u.finish_reason, u.stop_reason) for u in ups] == [(a, "stop", 9), (b, "length", None)]
    assert not s.has_unfinished() and s.kv.usage().num_used == 0
    s.check_integrity()
    with pytest.raises(KeyError):
        s.finish(a)  # already freed by its stop rule


def test_forks_get_the_stop_rule_each() -> None:
    s = make(max_num_batched_tokens=64)
    a = s.add_request("a", [1, 2, 3], 4, n=3, stop=StopRule(frozenset({0})))
    ups = s.update(s.schedule(), {a: [5, 0, 6]})
    assert [(u.parent_seq_id, u.finish_reason) for u in ups] == [(None, None), (a, "stop"), (a, None)]
    assert s.num_running == 2
    s.check_integrity()
