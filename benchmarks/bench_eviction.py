"""Prefix-cache eviction policies side by side: hit rate and recompute saved on one workload.

Drives `KVCacheManager` directly (no model): requests arrive one after another, each a
shared prefix (a system prompt, popularity Zipf-distributed; lengths vary) followed by a
unique suffix and its output; the pool holds a fraction of the distinct prefixes, so it
must evict. Per policy: prefix-hit share of prompt tokens, and the attention work the hits
saved, in token-pairs (a hit on a block at depth d saves d + 1 blocks of attention, the
quantity the cost policy ranks by). The same request stream goes to every policy.

    python benchmarks/bench_eviction.py [--requests 4000] [--num-blocks 96]
"""

from __future__ import annotations

import argparse
import random
import time

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.kv.eviction import EVICTION_POLICIES


def workload(args: argparse.Namespace) -> list[list[int]]:
    rng = random.Random(args.seed)
    bs = args.block_size
    prefixes = [[rng.randrange(32000) for _ in range(bs * rng.randint(1, args.max_prefix_blocks))]
                for _ in range(args.num_prefixes)]
    weights = [1.0 / (i + 1) ** args.zipf for i in range(args.num_prefixes)]
    reqs = []
    for _ in range(args.requests):
        prefix = rng.choices(prefixes, weights)[0]
        reqs.append(prefix + [rng.randrange(32000) for _ in range(rng.randint(1, 2 * bs))])
    return reqs


def run(policy: str, reqs: list[list[int]], args: argparse.Namespace) -> dict[str, float]:
    now = [0.0]
    kv = KVCacheManager(args.num_blocks, args.block_size, enable_prefix_caching=True, eviction=policy,
                        prefix_ttl_s=args.ttl_s if policy == "ttl" else 0.0, clock=lambda: now[0])
    bs = args.block_size
    prompt_tokens = hit_tokens = saved = 0
    t0 = time.perf_counter()
    for seq_id, prompt in enumerate(reqs):
        now[0] += 1.0  # one request a second
        hit = kv.lookup_prefix(prompt)
        total = len(prompt) + args.output_len
        kv.allocate(seq_id, total, hit)
        kv.cache_blocks(seq_id, prompt, len(prompt))
        kv.free(seq_id)
        prompt_tokens += len(prompt)
        hit_tokens += hit.num_blocks * bs
        saved += sum(d + 1 for d in range(hit.num_blocks))
    seconds = time.perf_counter() - t0
    kv.check_integrity()
    u = kv.usage()
    return {"hit_pct": 100.0 * hit_tokens / prompt_tokens, "saved_block_pairs": saved,
            "evictions": u.num_evictions, "ttl": u.evictions_by_reason.get("ttl", 0),
            "mean_evicted_age_s": u.evicted_age_s / u.num_evictions if u.num_evictions else 0.0,
            "us_per_request": seconds / len(reqs) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--num-blocks", type=int, default=96)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-prefixes", type=int, default=48)
    parser.add_argument("--max-prefix-blocks", type=int, default=12)
    parser.add_argument("--zipf", type=float, default=1.1, help="prefix popularity exponent")
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--ttl-s", type=float, default=120.0, help="ttl policy: seconds (one request a second)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reqs = workload(args)
    print(f"{args.requests} requests, {args.num_prefixes} prefixes of 1..{args.max_prefix_blocks} blocks "
          f"(Zipf {args.zipf}), pool {args.num_blocks} blocks of {args.block_size}")
    print(f"{'policy':<7} {'hit %':>6} {'saved':>8} {'evictions':>9} {'ttl':>5} {'mean age s':>10} {'us/req':>7}")
    for policy in EVICTION_POLICIES:
        r = run(policy, reqs, args)
        print(f"{policy:<7} {r['hit_pct']:>6.1f} {r['saved_block_pairs']:>8} {r['evictions']:>9} "
              f"{r['ttl']:>5} {r['mean_evicted_age_s']:>10.1f} {r['us_per_request']:>7.1f}")


if __name__ == "__main__":
    main()
