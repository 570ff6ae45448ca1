"""Property tests of prefix caching with the host offload tier and a shared store.

A fake paged pool stores token ids (see conftest's `FakePool`) and executes every plan the
way a backend must: swap_out, swap_in, block copies, then the writes. The fake model
samples from what it reads back through the block tables, so a block offloaded after it was
overwritten, a host block reused while a load still needed it, or a store block staged in
the wrong host block changes the outputs. `check_integrity()` runs after every operation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtkv.errors import RequestRejectedError
from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig


class FakeStore:
    """A shared store of token-id blocks (`RemoteBlockSource`)."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, list[int | None]] = {}
        self.num_fetched = 0

    def fetch(self, keys: Sequence[bytes]) -> list[object]:
        out: list[object] = []
        for key in keys:
            if key not in self.blocks:
                break
            out.append(list(self.blocks[key]))
        self.num_fetched += len(out)
        return out


def run_tiered(simkit: SimpleNamespace, requests: list, config: SchedulerConfig, num_blocks: int,
               block_size: int, num_host: int, num_offload: int, store: FakeStore | None):
    kv = KVCacheManager(num_blocks, block_size, num_host, enable_prefix_caching=True,
                        num_offload_blocks=num_offload, remote=store)
    if store is not None:
        kv.tiers.track_new_blocks()
    sched = Scheduler(config, kv)
    pool = simkit.FakePool(num_blocks, num_host + num_offload, block_size)
    outputs: dict[str, list[tuple[int, ...]]] = {}
    pending = sorted(requests, key=lambda r: r.arrive_step)
    step = 0
    while pending or sched.has_unfinished():
        assert step < 20_000
        while pending and pending[0].arrive_step <= step:
            r = pending.pop(0)
            try:
                sched.add_request(r.request_id, r.prompt, r.max_new_tokens,
                                  arrival_time=float(step), cache_salt=r.cache_salt, stop=simkit.EOS_RULE)
            except RequestRejectedError:
                continue
            outputs[r.request_id] = []
            if store is not None:  # the engine's TierTransfer: prefetch on add, stage before scheduling
                keys = kv.tiers.remote_keys(r.prompt, r.cache_salt)
                kv.tiers.stage_remote(keys, store.fetch(keys))
        plan = sched.schedule()
        sched.check_integrity()
        for host_block, data in kv.tiers.take_host_writes():
            pool.host[host_block] = list(data)  # type: ignore[call-overload]
        hosts_out = [h for _, h in plan.swap_out]
        assert len(set(hosts_out)) == len(hosts_out), "two blocks offloaded into one host block"
        contexts = pool.run(plan)
        sampled = {sid: [simkit.fake_next_token(ctx)] for sid, ctx in contexts.items()}
        before = {sid: sched.get_seq(sid).output_ids for sid in sampled}
        for u in sched.update(plan, sampled):
            if u.finish_reason is not None:  # the scheduler's stop rule freed it
                outputs[u.request_id].append((*before[u.seq_id], u.token_id))
        sched.check_integrity()
        if store is not None:
            for block_id, key in kv.tiers.take_new_blocks():
                store.blocks[key] = list(pool.device[block_id])
        step += 1
    return outputs, kv


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["recompute", "swap"]),
       num_blocks=st.integers(12, 30), num_offload=st.integers(1, 12))
def test_host_tier_outputs_match_reference(simkit, seed, mode, num_blocks, num_offload):
    rng = random.Random(seed)
    reqs = simkit.random_requests(rng, 16, max_prompt=30, max_new=8, spread=30,
                                  num_shared_prefixes=3, num_salts=2)
    config = SchedulerConfig(max_model_len=48, max_num_seqs=4, max_num_batched_tokens=16,
                             preemption_mode=mode)
    outputs, kv = run_tiered(simkit, reqs, config, num_blocks, 2, 6, num_offload, None)
    for r in reqs:
        if r.request_id in outputs:
            assert outputs[r.request_id] == simkit.reference_outputs(r.prompt, r.max_new_tokens, 1)
    usage = kv.usage()
    assert usage.num_used == 0 and usage.num_offload_used <= num_offload


def test_host_tier_hits_when_the_device_pool_overflows(simkit):
    rng = random.Random(5)
    reqs = simkit.random_requests(rng, 30, max_prompt=20, max_new=4, spread=60,
                                  num_shared_prefixes=4)
    config = SchedulerConfig(max_model_len=48, max_num_seqs=2, max_num_batched_tokens=16)
    outputs, kv = run_tiered(simkit, reqs, config, 14, 2, 0, 40, None)
    for r in reqs:
        if r.request_id in outputs:
            assert outputs[r.request_id] == simkit.reference_outputs(r.prompt, r.max_new_tokens, 1)
    usage = kv.usage()
    assert usage.num_offloaded > 0 and usage.num_host_hit_blocks > 0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), num_offload=st.integers(1, 16))
def test_second_engine_reuses_the_store(simkit, seed, num_offload):
    rng = random.Random(seed)
    reqs = simkit.random_requests(rng, 10, max_prompt=30, max_new=6, spread=20,
                                  num_shared_prefixes=2, num_salts=2)
    config = SchedulerConfig(max_model_len=48, max_num_seqs=4, max_num_batched_tokens=16)
    store = FakeStore()
    for _ in range(2):  # the second run plays another process: its device and host are new
        outputs, _ = run_tiered(simkit, reqs, config, 16, 2, 0, num_offload, store)
        for r in reqs:
            if r.request_id in outputs:
                assert outputs[r.request_id] == simkit.reference_outputs(r.prompt, r.max_new_tokens, 1)
    if any(len(r.prompt) > 2 for r in reqs):
        assert store.num_fetched > 0
