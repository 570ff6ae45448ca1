"""Scheduling policies (fcfs, priority, short-first with aging), the long-prefill throttle and
the max_new_tokens cap, on the scheduler with a null backend (every sampled token is 1; a
sequence finishes at max_new_tokens); KV integrity is checked after every call."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtkv.errors import ConfigError
from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig, SeqStatus

FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@dataclass(frozen=True)
class Arrival:
    request_id: str
    step: int
    prompt_len: int
    max_new_tokens: int
    priority: int = 0

    @property
    def cost(self) -> int:
        return self.prompt_len + self.max_new_tokens


@dataclass
class NullRun:
    first_step: dict[str, int] = field(default_factory=dict)
    """Request id -> the step its first tokens were scheduled."""
    order: dict[str, int] = field(default_factory=dict)
    """Request id -> its place in arrival (add_request) order."""
    max_long_prefills_seen: int = 0
    num_steps: int = 0
    num_preemptions: int = 0


def _num_long_prefills(sched: Scheduler, live: dict[int, Arrival], threshold: int) -> int:
    count = 0
    for seq_id, a in live.items():
        view = sched.get_seq(seq_id)
        decoding = bool(view.output_ids) and a.prompt_len + len(view.output_ids) - view.num_computed == 1
        count += view.status is SeqStatus.RUNNING and a.prompt_len > threshold and not decoding
    return count


def run_null(arrivals: list[Arrival], config: SchedulerConfig, num_blocks: int = 4096,
             block_size: int = 4, num_host_blocks: int = 0, max_steps: int = 5000) -> NullRun:
    """Drive ``config``'s scheduler over ``arrivals`` (arrival_time = step) until all finish."""
    sched = Scheduler(config, KVCacheManager(num_blocks, block_size, num_host_blocks))
    pending = sorted(arrivals, key=lambda a: a.step)
    live: dict[int, Arrival] = {}
    run = NullRun()
    threshold = config.long_prefill_threshold
    step = 0
    while pending or sched.has_unfinished():
        assert step < max_steps, "the scheduler made no progress"
        while pending and pending[0].step <= step:
            a = pending.pop(0)
            seq_id = sched.add_request(a.request_id, [1 + i % 97 for i in range(a.prompt_len)],
                                       a.max_new_tokens, priority=a.priority, arrival_time=float(step))
            live[seq_id] = a
            run.order[a.request_id] = len(run.order)
        plan = sched.schedule()
        sched.check_integrity()
        for q in plan.seqs:
            run.first_step.setdefault(live[q.seq_id].request_id, step)
        if threshold:
            run.max_long_prefills_seen = max(run.max_long_prefills_seen,
                                             _num_long_prefills(sched, live, threshold))
        for u in sched.update(plan, {q.seq_id: [1] for q in plan.seqs if q.sample}):
            if u.finish_reason is not None:  # max_new_tokens reached: the scheduler freed it
                del live[u.seq_id]
        sched.check_integrity()
        step += 1
    assert sched.kv.usage().num_used == 0 and sched.kv.usage().num_host_used == 0, "blocks leaked"
    run.num_steps, run.num_preemptions = step, sched.stats().num_preemptions
    return run


def mixed_workload() -> list[Arrival]:
    """8 long requests at step 0, then a short one every step for 80 steps."""
    longs = [Arrival(f"long{i}", 0, 240, 16) for i in range(8)]
    shorts = [Arrival(f"short{i}", i, 8, 4) for i in range(80)]
    return longs + shorts


def _mean_wait(run: NullRun, arrivals: list[Arrival], prefix: str) -> float:
    waits = [run.first_step[a.request_id] - a.step for a in arrivals if a.request_id.startswith(prefix)]
    return sum(waits) / len(waits)


MIXED = dict(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64)


def test_short_first_lowers_short_wait_at_least_8x_versus_fcfs() -> None:
    arrivals = mixed_workload()
    fcfs = run_null(arrivals, SchedulerConfig(**MIXED, scheduling_policy="fcfs"))
    sf = run_null(arrivals, SchedulerConfig(**MIXED, scheduling_policy="short-first",
                                            aging_tokens_per_s=4.0))
    fcfs_short, sf_short = _mean_wait(fcfs, arrivals, "short"), _mean_wait(sf, arrivals, "short")
    # Mean steps from arrival to first schedule, measured: fcfs 14.5, short-first 0.91 (~16x).
    assert sf_short * 8 <= fcfs_short, (fcfs_short, sf_short)
    # Aging: a long request (cost 256, rate 4/step, so virtual arrival 64) may be overtaken
    # only by shorts (cost 12, virtual arrival step + 3) that arrived before step 61.
    last_long = max(sf.first_step[f"long{i}"] for i in range(8))
    assert all(last_long <= sf.first_step[f"short{j}"] for j in range(61, 80))


def test_fcfs_ignores_priority_and_priority_is_the_default() -> None:
    arrivals = [Arrival("low-early", 0, 4, 2, priority=5), Arrival("high-late", 1, 4, 2, priority=0),
                Arrival("blocker", 0, 4, 8)]
    cfg = dict(max_model_len=64, max_num_seqs=1, max_num_batched_tokens=16)
    assert SchedulerConfig(max_model_len=8).scheduling_policy == "priority"
    by_priority = run_null(arrivals, SchedulerConfig(**cfg))  # type: ignore[arg-type]
    fcfs = run_null(arrivals, SchedulerConfig(**cfg, scheduling_policy="fcfs"))  # type: ignore[arg-type]
    assert by_priority.first_step["high-late"] < by_priority.first_step["low-early"]
    assert fcfs.first_step["low-early"] < fcfs.first_step["high-late"]


@FAST
@given(
    seed=st.integers(0, 2**31),
    policy=st.sampled_from(["fcfs", "priority", "short-first"]),
    rate=st.sampled_from([0.5, 2.0, 8.0, 64.0]),
    throttle=st.booleans(),
    mode=st.sampled_from(["recompute", "swap"]),
    num_blocks=st.integers(24, 80),
    budget=st.integers(8, 48),
)
def test_random_arrivals_respect_the_aging_bound(seed: int, policy: str, rate: float, throttle: bool,
                                                 mode: str, num_blocks: int, budget: int) -> None:
    rng = random.Random(seed)
    arrivals = []
    for i in range(rng.randint(5, 30)):
        long = rng.random() < 0.3
        arrivals.append(Arrival(f"r{i}", rng.randrange(40), rng.randint(40, 70) if long else rng.randint(1, 12),
                                rng.randint(1, 20), priority=rng.randrange(3)))
    threshold = 32 if throttle else 0
    config = SchedulerConfig(max_model_len=96, max_num_seqs=rng.randint(2, 8), max_num_batched_tokens=budget,
                             preemption_mode=mode, scheduling_policy=policy,  # type: ignore[arg-type]
                             aging_tokens_per_s=rate, long_prefill_threshold=threshold,
                             max_long_prefills=rng.randint(1, 2))
    run = run_null(arrivals, config, num_blocks=num_blocks, block_size=4, num_host_blocks=rng.randint(0, 24))
    assert set(run.first_step) == {a.request_id for a in arrivals}, "a request never ran"
    assert run.max_long_prefills_seen <= config.max_long_prefills
    if throttle:
        return  # the throttle defers long requests: they may be overtaken (documented)
    # A request Q that arrived after R but started strictly before R overtook R. Bound: only
    # if Q arrived less than cost_R / rate seconds (steps here) after R; fcfs: never.
    for r in arrivals:
        for q in arrivals:
            later = run.order[q.request_id] > run.order[r.request_id]
            if later and run.first_step[q.request_id] < run.first_step[r.request_id]:
                if policy == "short-first":
                    assert q.step < r.step + r.cost / rate + 1e-9, (q, r, run.first_step)
                elif policy == "fcfs" or q.priority == r.priority:
                    raise AssertionError(f"{q.request_id} overtook {r.request_id} under {policy}")


def test_long_prefill_throttle_bounds_concurrent_long_prefills_shorts_keep_flowing() -> None:
    arrivals = [Arrival(f"long{i}", 0, 200, 8) for i in range(6)]
    arrivals += [Arrival(f"short{i}", 1 + i, 6, 3) for i in range(30)]
    base = dict(max_model_len=256, max_num_seqs=8, max_num_batched_tokens=64, long_prefill_threshold=100)
    unthrottled = run_null(arrivals, SchedulerConfig(**base, max_long_prefills=8))  # type: ignore[arg-type]
    assert unthrottled.max_long_prefills_seen == 2, "the workload should overlap long prefills"
    for num_blocks in (4096, 60):  # 60 blocks: recompute preemptions, re-admitted longs count again
        run = run_null(arrivals, SchedulerConfig(**base, max_long_prefills=1),  # type: ignore[arg-type]
                       num_blocks=num_blocks)
        assert run.max_long_prefills_seen == 1, "counted after every schedule(), by run_null"
        assert set(run.first_step) == {a.request_id for a in arrivals}, "every request finished"
        assert (run.num_preemptions > 0) == (num_blocks == 60)
        # Deferred, not blocking: most shorts (arriving after the longs) start before the last long.
        last_long = max(run.first_step[f"long{i}"] for i in range(6))
        assert sum(run.first_step[f"short{i}"] < last_long for i in range(30)) >= 10
    # Measured (4096 blocks): mean short wait 8.97 steps unthrottled, 1.1 throttled.
    assert _mean_wait(run_null(arrivals, SchedulerConfig(**base, max_long_prefills=1)),  # type: ignore[arg-type]
                      arrivals, "short") * 4 < _mean_wait(unthrottled, arrivals, "short")


@pytest.mark.parametrize("policy", ["fcfs", "short-first"])
def test_policies_keep_outputs_exact_under_preemption_forks_and_caching(simkit: SimpleNamespace,
                                                                         policy: str) -> None:
    rng = random.Random(7)
    reqs = simkit.random_requests(rng, 24, max_prompt=30, max_new=20, max_n=3, spread=15,
                                  abort_prob=0.2, num_shared_prefixes=2)
    for mode in ("recompute", "swap"):
        config = SchedulerConfig(max_model_len=64, max_num_seqs=6, max_num_batched_tokens=16,
                                 preemption_mode=mode, scheduling_policy=policy,  # type: ignore[arg-type]
                                 aging_tokens_per_s=3.0, long_prefill_threshold=12)
        res, sched = simkit.run_sim(reqs, config, num_blocks=24, block_size=4, num_host_blocks=12,
                                    prefix_caching=True)
        for r in reqs:
            if r.request_id not in res.rejected and r.request_id not in res.aborted:
                assert sorted(res.outputs[r.request_id]) == simkit.reference_outputs(
                    r.prompt, r.max_new_tokens, r.n)
        assert sched.stats().num_long_prefill_deferrals > 0 and not sched.has_unfinished()


# -- max_new_tokens cap (engine over a null backend) ----------------------------------------


class _NullBackend:
    """Logits that always pick token 5 (not EOS); block moves are no-ops."""

    num_blocks, block_size, num_host_blocks, supports_block_io = 64, 4, 0, False

    def execute(self, plan: object) -> np.ndarray:
        rows = sum(s.sample for s in plan.seqs)  # type: ignore[attr-defined]
        logits = np.zeros((rows, 128), np.float32)
        logits[:, 5] = 1.0
        return logits


def _engine(tmp_path: Path, cap: int) -> object:
    from trtkv.manifest import Manifest
    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.engine import Engine

    Manifest(architecture="llama", num_layers=1, hidden_size=16, num_heads=1, num_kv_heads=1, head_dim=16,
             vocab_size=128, max_position_embeddings=64, dtype="fp32", kv_dtype="fp32",
             k_scales=((1.0,),), v_scales=((1.0,),), block_size=4, sliding_windows=(0,),
             eos_token_ids=(2,), bos_token_id=1).save(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    return Engine(tmp_path, EngineConfig(max_new_tokens_cap=cap), backend=_NullBackend())  # type: ignore[arg-type]


def test_cap_lowers_max_new_tokens_and_flags_only_what_it_cut(tmp_path: Path) -> None:
    from trtkv.runtime.sampling import SamplingParams
    from trtkv.serving.responses import usage

    engine = _engine(tmp_path, cap=4)
    greedy = dict(temperature=0.0)
    engine.add_request([3, 4], SamplingParams(max_new_tokens=10, min_tokens=8, **greedy), request_id="cut")  # type: ignore[attr-defined]
    engine.add_request([3, 4], SamplingParams(max_new_tokens=3, **greedy), request_id="under")  # type: ignore[attr-defined]
    engine.add_request([3, 4], SamplingParams(max_new_tokens=4, **greedy), request_id="equal")  # type: ignore[attr-defined]
    engine.add_request([3, 4], SamplingParams(max_new_tokens=9, stop_token_ids=(5,), **greedy), request_id="stopped")  # type: ignore[attr-defined]
    final = {}
    while engine.has_unfinished():  # type: ignore[attr-defined]
        for out in engine.step():  # type: ignore[attr-defined]
            final[out.request_id] = out
        engine.kv.check_integrity()  # type: ignore[attr-defined]
    got = {r: (len(o.outputs[0].token_ids), o.outputs[0].finish_reason, o.outputs[0].capped) for r, o in final.items()}
    assert got == {"cut": (4, "length", True), "under": (3, "length", False),
                   "equal": (4, "length", False), "stopped": (1, "stop", False)}
    assert usage(final["cut"])["max_tokens_capped"] is True
    assert "max_tokens_capped" not in usage(final["equal"])
    uncapped = _engine(tmp_path, cap=0)
    uncapped.add_request([3], SamplingParams(max_new_tokens=10, **greedy), request_id="a")  # type: ignore[attr-defined]
    while uncapped.has_unfinished():  # type: ignore[attr-defined]
        (out,) = uncapped.step()  # type: ignore[attr-defined]
    assert len(out.outputs[0].token_ids) == 10 and not out.outputs[0].capped


# -- option validation -----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"scheduling_policy": "lifo"}, {"aging_tokens_per_s": 0.0}, {"aging_tokens_per_s": -1.0},
    {"aging_tokens_per_s": float("nan")}, {"long_prefill_threshold": -1}, {"max_long_prefills": 0},
])
def test_bad_scheduler_options_are_one_line_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        SchedulerConfig(max_model_len=64, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and next(iter(kwargs)) in str(e.value)


def test_bad_engine_cap_is_a_one_line_config_error() -> None:
    from trtkv.runtime.config import EngineConfig

    with pytest.raises(ConfigError, match="max-new-tokens-cap") as e:
        EngineConfig(max_new_tokens_cap=-1)
    assert "\n" not in str(e.value)
