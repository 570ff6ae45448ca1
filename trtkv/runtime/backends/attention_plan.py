"""The step's FlashInfer attention plan for plugin engines, made once per step on the host.

Plugin engines (`trtkv build --attention plugin`) take an ``attention_workspace`` input. Before
each step the TensorRT backend calls `AttentionPlanner.plan` with the step's host-side
query_start_loc / context_lens / block tables: libtrtkv_plugins.so plans FlashInfer's schedule
into the device workspace and registers it under the workspace's address, and every
PagedAttention layer of the step runs with it (plugins/tensorrt/attention_plan.h). Models
FlashInfer is not built for (fp32 or int8 KV, head_dim other than 64/128), or a plugin library
built without FlashInfer, run trtkv's own kernels: the planner then only binds a one-word
workspace.

Imports torch lazily (the backend passes it in); must not import tensorrt.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.errors import BackendUnavailableError
from trtkv.manifest import Manifest
from trtkv.ops.schema import ceil_div

#: trtkv::DType values of the plan C ABI.
_DTYPES = {"fp16": 1, "bf16": 2, "fp8": 3}
_UNAVAILABLE = 4  # kTrtkvPlanUnavailable: built without FlashInfer
_P = ctypes.c_void_p
_I32, _I64, _SIZE = ctypes.c_int32, ctypes.c_int64, ctypes.c_size_t


def flashinfer_eligible(manifest: Manifest) -> bool:
    """Whether the FlashInfer route serves this model (else trtkv's own kernels do)."""
    m = manifest
    return (m.dtype in ("fp16", "bf16") and m.kv_dtype in (m.dtype, "fp8") and m.head_dim in (64, 128))


class AttentionPlanner:
    """Owns the plan workspaces of one engine context and plans each step into them.

    Args:
        library: path of the libtrtkv_plugins.so TensorRT loaded (the same handle is reused).
        manifest: the model (heads, dims, dtypes, sliding windows).
        block_size, num_blocks, max_blocks_per_seq, max_tokens, max_seqs: the engine's limits.
        torch: the torch module (CUDA).
    """

    def __init__(self, library: Path, manifest: Manifest, *, block_size: int, num_blocks: int,
                 max_blocks_per_seq: int, max_tokens: int, max_seqs: int, torch: Any) -> None:
        self._torch = torch
        m = manifest
        self._shape = (m.num_heads, m.num_kv_heads, m.head_dim, block_size, num_blocks, max_blocks_per_seq,
                       _DTYPES.get(m.dtype, 0), _DTYPES.get(m.kv_dtype, 0), int(any(m.sliding_windows)))
        self._limits = (max_tokens, max_seqs)
        self.enabled = False
        device_bytes, host_bytes = 8, 8
        if flashinfer_eligible(m):
            self._lib = ctypes.CDLL(str(library))
            self._declare()
            dev, host = _SIZE(0), _SIZE(0)
            status = self._lib.trtkv_attention_workspace_size(*self._shape, *self._limits, ctypes.byref(dev),
                                                              ctypes.byref(host))
            if status == 0:
                self.enabled = True
                device_bytes, host_bytes = int(dev.value), int(host.value)
            elif status != _UNAVAILABLE:
                raise BackendUnavailableError(
                    f"{library} refused the attention workspace for this model (status {status}); rebuild the "
                    "engine and plugins with this trtkv")
        words = ceil_div(device_bytes, 8)
        self.device = torch.zeros(words, dtype=torch.int64, device="cuda")
        self.host = torch.empty(max(host_bytes, 1), dtype=torch.uint8).pin_memory()

    def _declare(self) -> None:
        lib = self._lib
        shape = [_I32, _I32, _I32, _I32, _I64, _I32, _I32, _I32, _I32]
        lib.trtkv_attention_workspace_size.argtypes = [*shape, _I64, _I32, ctypes.POINTER(_SIZE), ctypes.POINTER(_SIZE)]
        lib.trtkv_attention_workspace_size.restype = _I32
        lib.trtkv_plan_attention.argtypes = [*shape, _I64, _I32, _P, _P, _P, _P, _I64, _I32, _P, _SIZE, _P, _SIZE, _P]
        lib.trtkv_plan_attention.restype = _I32

    def plan(self, query_start_loc: np.ndarray, context_lens: np.ndarray, block_tables: np.ndarray,
             block_tables_device: Any, stream: int) -> None:
        """Plan one step (host arrays int32; the device copy of block_tables) on ``stream``.

        Raises:
            BackendUnavailableError: the plan was refused (a bad step or a CUDA error).
        """
        if not self.enabled:
            return
        qsl = np.ascontiguousarray(query_start_loc, dtype=np.int32)
        ctx = np.ascontiguousarray(context_lens, dtype=np.int32)
        tables = np.ascontiguousarray(block_tables, dtype=np.int32)
        status = self._lib.trtkv_plan_attention(
            *self._shape, int(len(qsl) and qsl[-1]), len(ctx), qsl.ctypes.data, ctx.ctypes.data,
            block_tables_device.data_ptr(), tables.ctypes.data, *self._limits,
            self.device.data_ptr(), self.device.numel() * 8, self.host.data_ptr(), self.host.numel(), stream)
        if status != 0:
            raise BackendUnavailableError(f"FlashInfer refused this step's attention plan (status {status})")
