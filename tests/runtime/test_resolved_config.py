"""Configuration resolved once at start: `resolve_config` loads the manifest once and derives
the backend, scheduler, cache and store settings; `EngineConfig` defaults are its components'."""

from __future__ import annotations

import dataclasses

import pytest

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.runtime.backends import BackendConfig
from trtkv.runtime.config import EngineConfig, resolve_config
from trtkv.runtime.engine import Engine
from trtkv.runtime.scheduler import SchedulerConfig


def test_engine_options_take_their_defaults_from_the_component_configs() -> None:
    owners = {f.name: BackendConfig for f in dataclasses.fields(BackendConfig)}
    owners.update({f.name: SchedulerConfig for f in dataclasses.fields(SchedulerConfig) if f.name != "max_model_len"})
    shared = [f for f in dataclasses.fields(EngineConfig) if f.name in owners]
    assert len(shared) == 20
    for f in shared:
        assert f.default == getattr(owners[f.name], f.name), f.name


def test_the_manifest_is_loaded_once_at_start(exported_factory, monkeypatch) -> None:
    model_dir = exported_factory("llama")
    calls = []
    real = Manifest.load.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):  # the real loader, counted
        calls.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Manifest, "load", classmethod(counting))
    Engine(model_dir, EngineConfig(num_blocks=32))
    assert len(calls) == 1


def test_offload_blocks_resolve_once_and_split_the_host_pool(exported_factory) -> None:
    model_dir = exported_factory("llama")
    r = resolve_config(model_dir, EngineConfig(num_blocks=32, block_size=16, num_host_blocks=5,
                                               enable_prefix_caching=True, kv_offload_blocks=7))
    assert (r.cache.num_swap_blocks, r.cache.num_offload_blocks, r.backend.num_host_blocks) == (5, 7, 12)
    assert r.scheduler.max_model_len == r.manifest.max_position_embeddings
    engine = Engine(model_dir, EngineConfig(num_blocks=32, block_size=16, num_host_blocks=5,
                                            enable_prefix_caching=True, kv_offload_blocks=7))
    usage = engine.kv.usage()
    assert (usage.num_host_total, usage.num_offload_total, engine.backend.num_host_blocks) == (5, 7, 12)
    gib = resolve_config(model_dir, EngineConfig(enable_prefix_caching=True, kv_offload_gib=0.001, block_size=16))
    per_block = gib.kv_manifest.kv_bytes_per_token() * 16
    assert gib.cache.num_offload_blocks == int(0.001 * 2**30) // per_block


def test_what_the_model_rules_out_is_refused_at_resolution(exported_factory) -> None:
    model_dir = exported_factory("llama")
    with pytest.raises(ConfigError, match="max positions"):
        resolve_config(model_dir, EngineConfig(max_model_len=10**6))
    with pytest.raises(ConfigError, match="calibrated"):
        resolve_config(model_dir, EngineConfig(kv_dtype="int8"))
    with pytest.raises(ConfigError, match="num-host-blocks"):
        resolve_config(model_dir, EngineConfig(preemption_mode="swap"))
