"""The scheduler simulator (`tests/runtime/sim.py`) as the `simkit` fixture, for every test below."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.runtime.sim import (
    EOS_RULE,
    FakePool,
    SimRequest,
    fake_next_token,
    is_eos,
    random_requests,
    reference_outputs,
    run_sim,
)


@pytest.fixture
def simkit() -> SimpleNamespace:
    """The simulator's helpers (also importable from tests.runtime.sim)."""
    return SimpleNamespace(
        FakePool=FakePool, SimRequest=SimRequest, run_sim=run_sim, random_requests=random_requests,
        reference_outputs=reference_outputs, fake_next_token=fake_next_token, is_eos=is_eos,
        EOS_RULE=EOS_RULE,
    )
