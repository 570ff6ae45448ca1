"""Property tests: a fake engine loop over random workloads, integrity checked every call.

The fake backend (`conftest.FakePool`) stores token ids in a paged pool and samples from
what it reads back through the block tables, so outputs equal `reference_outputs` only if
block tables, copy-on-write, swaps and recompute all keep every sequence's context exact.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtkv.runtime.scheduler import REJECT_REASONS, SchedulerConfig

FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def check_outcomes(k: SimpleNamespace, requests: list, res: object, sched: object) -> None:
    """Every request finished with the reference outputs, was aborted, or was rejected."""
    for r in requests:
        if r.request_id in res.rejected:  # type: ignore[attr-defined]
            assert res.rejected[r.request_id] in REJECT_REASONS  # type: ignore[attr-defined]
        elif r.request_id not in res.aborted:  # type: ignore[attr-defined]
            got = sorted(res.outputs[r.request_id])  # type: ignore[attr-defined]
            assert got == k.reference_outputs(r.prompt, r.max_new_tokens, r.n), r.request_id
    usage = sched.kv.usage()  # type: ignore[attr-defined]
    assert usage.num_used == 0 and usage.num_host_used == 0, "blocks leaked"
    assert not sched.has_unfinished()  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_outputs_with_preemption_equal_outputs_without(simkit: SimpleNamespace, mode: str) -> None:
    rng = random.Random(1234)
    reqs = simkit.random_requests(rng, 24, max_prompt=30, max_new=24, max_n=3, num_priorities=3)
    roomy = SchedulerConfig(max_model_len=64, max_num_seqs=64, max_num_batched_tokens=4096)
    base, s0 = simkit.run_sim(reqs, roomy, num_blocks=4096, block_size=4)
    assert s0.stats().num_preemptions == 0 and not base.rejected
    tight = SchedulerConfig(max_model_len=64, max_num_seqs=8, max_num_batched_tokens=16,
                            preemption_mode=mode)
    res, s1 = simkit.run_sim(reqs, tight, num_blocks=20, block_size=4, num_host_blocks=10)
    stats = s1.stats()
    assert stats.num_preemptions > 0, "the pool was meant to be too small"
    if mode == "swap":
        assert stats.num_preemptions_swap > 0
    assert stats.num_chunked_prefills > 0 and res.num_mixed_steps > 0
    assert {r: sorted(o) for r, o in res.outputs.items()} == {
        r: sorted(o) for r, o in base.outputs.items()
    }
    check_outcomes(simkit, reqs, res, s1)


@FAST
@given(
    seed=st.integers(0, 2**31),
    num_blocks=st.integers(8, 40),
    block_size=st.sampled_from([1, 2, 4, 8]),
    mode=st.sampled_from(["recompute", "swap"]),
    chunked=st.booleans(),
    budget=st.integers(8, 48),
)
def test_random_workloads_finish_cleanly(
    simkit: SimpleNamespace, seed: int, num_blocks: int, block_size: int, mode: str,
    chunked: bool, budget: int,
) -> None:
    rng = random.Random(seed)
    reqs = simkit.random_requests(rng, 16, max_prompt=40, max_new=20, max_n=3,
                                  num_priorities=3, spread=15, abort_prob=0.25)
    config = SchedulerConfig(
        max_model_len=48, max_num_seqs=rng.randint(1, 8),
        max_num_batched_tokens=budget if chunked else 48, enable_chunked_prefill=chunked,
        max_num_queued_requests=rng.randint(2, 16), preemption_mode=mode,
    )
    res, sched = simkit.run_sim(reqs, config, num_blocks=num_blocks, block_size=block_size,
                                num_host_blocks=rng.randint(0, 12))
    check_outcomes(simkit, reqs, res, sched)


def test_rejections_carry_reasons(simkit: SimpleNamespace) -> None:
    R = simkit.SimRequest
    reqs = [R("ok", [1, 2, 3], 4), R("long", [1] * 40, 20), R("big", [1] * 30, 10)]
    reqs += [R(f"q{i}", [i + 1], 2) for i in range(5)]
    config = SchedulerConfig(max_model_len=48, max_num_queued_requests=4)
    res, sched = simkit.run_sim(reqs, config, num_blocks=8, block_size=4)
    assert res.rejected == {"long": "too_long", "big": "kv_capacity", "q3": "queue_full",
                            "q4": "queue_full"}
    check_outcomes(simkit, reqs, res, sched)
    assert sched.stats().num_rejected == {"too_long": 1, "kv_capacity": 1, "too_many_seqs": 0, "queue_full": 2}
