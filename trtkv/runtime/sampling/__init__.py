"""Token selection and output text: sampling parameters, the sampler, stop checks and
incremental detokenization.

Module map:
    params       `SamplingParams` (frozen, validated request knobs)
    (`SamplingDefaults`, the one set of defaults, lives in `trtkv.runtime.sampling_defaults`:
    light enough for the CLI to import at start.)
    processors   penalties, stop-token masking, top-k / top-p / min-p filters (pure numpy)
    sampler      `Sampler`, `SampleRow`, `SampleResult`, `make_generator`
    stop         `StopChecker` (finish reasons, stop strings, stream hold-back)
    detokenizer  `IncrementalDetokenizer` (token ids -> stable UTF-8 text deltas)
    guided       `GuidedDecoding`, `GrammarCompiler`, `Guide` (structured output as a mask)

numpy only: must not import torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from trtkv.runtime.sampling.detokenizer import IncrementalDetokenizer
from trtkv.runtime.sampling.guided import GrammarCompiler, GuidedDecoding
from trtkv.runtime.sampling.params import SamplingParams
from trtkv.runtime.sampling.sampler import (
    Sampler,
    SampleResult,
    SampleRow,
    TokenLogprob,
    make_generator,
)
from trtkv.runtime.sampling.stop import FinishReason, StopChecker, StopUpdate
from trtkv.runtime.sampling_defaults import SamplingDefaults

__all__ = [
    "FinishReason",
    "GrammarCompiler",
    "GuidedDecoding",
    "IncrementalDetokenizer",
    "SampleResult",
    "SampleRow",
    "Sampler",
    "SamplingDefaults",
    "SamplingParams",
    "StopChecker",
    "StopUpdate",
    "TokenLogprob",
    "make_generator",
]
