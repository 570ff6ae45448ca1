"""The disk KV tier: files on a real directory (round trip, restart, integrity, size bound,
a disk that refuses writes), then end to end on ONNX Runtime below the host tier."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.test_prefix_engine import run_one_by_one, shared_prefix_prompts
from trtkv.errors import ConfigError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.tiers.block_codec import BlockFormat
from trtkv.runtime.tiers.disk_store import DiskKVStore
from trtkv.serving import prometheus

SHAPE = (2, 2, 4, 1, 8)


def _fmt(fingerprint: str = "fp-a", kv_dtype: str = "fp32") -> BlockFormat:
    return BlockFormat(fingerprint, kv_dtype, "float32", SHAPE, ((1.0,),) * 2, ((1.0,),) * 2)


def _block(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _key(i: int) -> bytes:
    return bytes([i]) * 16


def test_round_trip_leading_run_and_restart(tmp_path: Path) -> None:
    disk = DiskKVStore(tmp_path, _fmt(), 1 << 20)
    for i in range(3):
        assert disk.put(_key(i), _block(i))
    got = disk.fetch([_key(0), _key(1), _key(9), _key(2)])  # stops at the first miss
    assert len(got) == 2 and all(np.array_equal(g, _block(i)) for i, g in enumerate(got))
    again = DiskKVStore(tmp_path, _fmt(), 1 << 20)  # a restart: the index comes from the files
    assert len(again) == 3 and np.array_equal(again.fetch([_key(2)])[0], _block(2))
    other = DiskKVStore(tmp_path, _fmt("fp-b"), 1 << 20)  # another model fingerprint
    assert len(other) == 0 and other.fetch([_key(0)]) == []


def test_corrupt_truncated_or_foreign_files_are_misses_never_served(tmp_path: Path) -> None:
    disk = DiskKVStore(tmp_path, _fmt(), 1 << 20)
    for i in range(4):
        disk.put(_key(i), _block(i))
    files = {i: disk.dir / f"{_key(i).hex()}.kvb" for i in range(4)}
    raw = bytearray(files[0].read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte of K/V
    files[0].write_bytes(bytes(raw))
    files[1].write_bytes(files[1].read_bytes()[:100])  # torn
    files[2].write_bytes(files[3].read_bytes())  # another key's block under this name
    for i in range(3):
        assert disk.fetch([_key(i)]) == [], i
        assert not files[i].exists() and _key(i) not in disk
    assert disk.counts["corrupt"] == 3
    assert np.array_equal(disk.fetch([_key(3)])[0], _block(3))
    (disk.dir / ".tmp-123-0").write_bytes(b"half a block")  # a crash mid-write
    DiskKVStore(tmp_path, _fmt(), 1 << 20)
    assert not (disk.dir / ".tmp-123-0").exists()


def test_size_bound_evicts_least_recently_used_files(tmp_path: Path) -> None:
    probe = DiskKVStore(tmp_path / "probe", _fmt(), 1 << 20)
    disk = DiskKVStore(tmp_path, _fmt(), 3 * probe.file_bytes)
    assert disk.max_files == 3
    for i in range(3):
        disk.put(_key(i), _block(i))
    disk.fetch([_key(0)])  # 0 is now the most recently used
    disk.put(_key(3), _block(3))
    assert {i for i in range(4) if _key(i) in disk} == {0, 2, 3}
    assert sorted(p.name for p in disk.dir.iterdir()) == sorted(f"{_key(i).hex()}.kvb" for i in (0, 2, 3))
    assert DiskKVStore(tmp_path, _fmt(), 2 * probe.file_bytes).stats()["blocks"] == 2  # a smaller bound at start


def test_a_disk_that_refuses_writes_degrades_to_what_it_holds(tmp_path: Path) -> None:
    disk = DiskKVStore(tmp_path, _fmt(), 1 << 20)
    disk.put(_key(0), _block(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # the kernel refuses bigger files: EFBIG
    try:
        assert not disk.put(_key(1), _block(1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert disk.counts["write_errors"] == 1 and not disk.writable
    assert not disk.put(_key(2), _block(2))  # writing stays off, no retry storm
    assert [p.name for p in disk.dir.iterdir()] == [f"{_key(0).hex()}.kvb"]  # no partial file left
    assert np.array_equal(disk.fetch([_key(0)])[0], _block(0))


def _engine(model_dir: Path, disk_dir: Path, **extra: object) -> Engine:
    return Engine(model_dir, EngineConfig(num_blocks=12, block_size=16, max_num_seqs=2, enable_prefix_caching=True,
                                          kv_offload_blocks=4, kv_disk_dir=str(disk_dir), **extra))  # type: ignore[arg-type]


def test_disk_tier_below_host_memory_end_to_end_and_across_a_restart(exported_factory, tmp_path: Path) -> None:
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(12, 4, 64, seed=3)  # 4 prefixes x 4 blocks > 12 device + 4 host
    off = run_one_by_one(Engine(model_dir, EngineConfig(num_blocks=12, block_size=16, max_num_seqs=2)), prompts)
    engine = _engine(model_dir, tmp_path)
    on = run_one_by_one(engine, prompts)
    assert [t for t, _ in on] == [t for t, _ in off]
    disk = engine.stats()["kv_store"]["disk"]
    assert disk["writes"] > 0 and disk["hits"] > 0, disk
    assert engine.kv.usage().num_used == 0
    page = prometheus.render(prometheus.collect(engine), {}).decode()
    assert f"trtkv_kv_disk_hits {float(disk['hits'])}" in page and "trtkv_kv_disk_write_errors 0.0" in page
    engine.close()

    restarted = _engine(model_dir, tmp_path)  # same model fingerprint: the files are its cache
    again = run_one_by_one(restarted, prompts[:4])
    assert [t for t, _ in again] == [t for t, _ in off[:4]]
    assert sum(c for _, c in again) > 0 and restarted.stats()["kv_store"]["disk"]["hits"] > 0
    restarted.close()

    for path in (tmp_path).rglob("*.kvb"):  # every file damaged: recompute, same tokens
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    damaged = _engine(model_dir, tmp_path)
    assert [t for t, _ in run_one_by_one(damaged, prompts[:4])] == [t for t, _ in off[:4]]
    stats = damaged.stats()["kv_store"]["disk"]
    assert stats["hits"] == 0 and stats["corrupt"] > 0
    damaged.close()


def test_disk_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="enable-prefix-caching"):
        EngineConfig(kv_disk_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="kv-disk-gib"):
        EngineConfig(enable_prefix_caching=True, kv_disk_dir=str(tmp_path), kv_disk_gib=0)


_FULL_DISK_RUN = """
import json, sys
from tests.runtime.test_prefix_engine import run_one_by_one, shared_prefix_prompts
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
engine = Engine(sys.argv[1], EngineConfig(num_blocks=12, block_size=16, max_num_seqs=2, enable_prefix_caching=True,
                                          kv_offload_blocks=4, kv_disk_dir=sys.argv[2]))
out = run_one_by_one(engine, shared_prefix_prompts(12, 4, 64, seed=3))
print(json.dumps({"tokens": [list(t) for t, _ in out], "disk": engine.stats()["kv_store"]["disk"]}))
"""


def _full_disk() -> None:  # in the child: the kernel refuses any file past 4 KiB (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def test_a_full_disk_fails_no_request(exported_factory, tmp_path: Path) -> None:
    """The server's disk fills up: every request still completes with the same tokens, the
    tier stops writing with one warning, nothing partial is left; and a directory that cannot
    be created is refused at start with one line."""
    import json
    import subprocess
    import sys

    model_dir = exported_factory("llama")
    off = run_one_by_one(Engine(model_dir, EngineConfig(num_blocks=12, block_size=16, max_num_seqs=2)),
                         shared_prefix_prompts(12, 4, 64, seed=3))
    r = subprocess.run([sys.executable, "-c", _FULL_DISK_RUN, str(model_dir), str(tmp_path)], capture_output=True,
                       text=True, timeout=300, preexec_fn=_full_disk, cwd=Path(__file__).parents[3])
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tokens"] == [list(t) for t, _ in off]
    assert result["disk"]["write_errors"] == 1 and result["disk"]["writes"] == 0 and not result["disk"]["writable"]
    assert r.stderr.count("cannot write") == 1, r.stderr
    assert not list(tmp_path.rglob("*.kvb")) and not list(tmp_path.rglob(".tmp-*"))
    with pytest.raises(ConfigError, match="writable directory"):
        Engine(model_dir, EngineConfig(num_blocks=12, block_size=16, enable_prefix_caching=True,
                                       kv_disk_dir="/proc/trtkv/kv"))
