"""Build and bind the CPU emulation of the trtkv kernels (plugins/emulation/), no GPU needed.

`build_emulation_library()` compiles plugins/emulation/emulate_kernels.cpp -- the unmodified
kernels, launchers and C ABI over cuda_emulation.h -- with g++ into a shared library exporting
the C ABI of libtrtkv_kernels.so (host pointers instead of device pointers). Builds are cached
by (sources, flags) hash under a temp directory, as in nvcc_build.py. `sanitize=True` builds
with AddressSanitizer + UBSan (the loading process then needs `sanitizer_env()`: libasan must
be preloaded). `EmulatedKernels` is a ctypes binding over NumPy arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGINS_DIR = Path(__file__).resolve().parent
EMULATION_DIR = PLUGINS_DIR / "emulation"
DRIVER = EMULATION_DIR / "emulate_kernels.cpp"
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2, "fp8": 3, "int8": 4}
STATUS_OK, STATUS_INVALID_ARGUMENT, STATUS_INVALID_INPUT = 0, 1, 4
#: kError* bits of plugins/kernels/trtkv_kernels.h.
ERROR_SLOT, ERROR_BLOCK_ID, ERROR_CONTEXT_LEN, ERROR_QUERY_START_LOC = 1, 2, 4, 8

_COMMON_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra",
                 "-Wno-unknown-pragmas")
_SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer")


def gxx_path() -> str | None:
    return shutil.which("g++")


def _sources() -> list[Path]:
    files = [DRIVER, *sorted(EMULATION_DIR.glob("*.h")), *sorted((EMULATION_DIR / "include").glob("*.h"))]
    files += sorted((PLUGINS_DIR / "kernels").glob("*.*")) + sorted((PLUGINS_DIR / "capi").glob("*.*"))
    files += sorted((PLUGINS_DIR / "generated").glob("*.h"))
    return files


def build_emulation_library(*, sanitize: bool = False) -> tuple[Path, float]:
    """Compile the emulation library (``-O2``, or ASan + UBSan with ``sanitize``).

    Returns:
        (path of the library, seconds spent compiling; 0.0 on a cache hit).

    Raises:
        FileNotFoundError: g++ is not on PATH.
        RuntimeError: compilation failed (message holds the compiler's output).
    """
    gxx = gxx_path()
    if gxx is None:
        raise FileNotFoundError("g++ not found on PATH")
    flags = [*_COMMON_FLAGS, *(_SANITIZE_FLAGS if sanitize else ("-O2",)),
             f"-I{EMULATION_DIR / 'include'}"]
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(flags).encode())
    root = os.environ.get("TRTKV_EMULATION_CACHE") or os.path.join(tempfile.gettempdir(), f"trtkv-emu-{os.getuid()}")
    target_dir = Path(root) / digest.hexdigest()[:16]
    library = target_dir / ("libtrtkv_kernels_emulated" + ("_asan" if sanitize else "") + ".so")
    if library.is_file():
        return library, 0.0
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".{library.name}.{os.getpid()}"
    started = time.monotonic()
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []  # shares the CI machine politely
    proc = subprocess.run([*nice, gxx, *flags, str(DRIVER), "-o", str(tmp)], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"g++ failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    tmp.replace(library)  # atomic: concurrent sessions never see a half-written library
    return library, elapsed


def sanitizer_env() -> dict[str, str]:
    """Environment for a process that loads the sanitized library: libasan preloaded, leak
    checking off (the interpreter's own allocations), any report fatal."""
    gxx = gxx_path() or "g++"
    libasan = subprocess.run([gxx, "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = dict(os.environ)
    env["LD_PRELOAD"] = libasan
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87"
    return env


def _ptr(array: np.ndarray | None) -> int | None:
    if array is None:
        return None
    assert array.flags.c_contiguous, "arrays handed to the kernels must be C-contiguous"
    return int(array.ctypes.data)


class EmulatedKernels:
    """ctypes binding of the emulation library; arguments are NumPy arrays (host memory)."""

    def __init__(self, path: str | Path) -> None:
        lib = ctypes.CDLL(str(path))
        p, i32, i64, f32, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t
        lib.trtkv_abi_version.restype = i32
        lib.trtkv_status_string.restype = ctypes.c_char_p
        lib.trtkv_status_string.argtypes = [i32]
        lib.trtkv_emulation_last_error.restype = ctypes.c_char_p
        lib.trtkv_status_from_error_flags.restype = i32
        lib.trtkv_status_from_error_flags.argtypes = [ctypes.c_uint32]
        lib.trtkv_kv_append_grouped_checked.restype = i32
        lib.trtkv_kv_append_grouped_checked.argtypes = [p] * 8 + [i64, i32, i32, i64, i32, i32, i32, i32, i32, i32, p, p]
        lib.trtkv_paged_attention_workspace_size.restype = sz
        lib.trtkv_paged_attention_workspace_size.argtypes = [i64, i32, i32, i32, i32, i32, i32, i32]
        lib.trtkv_paged_attention_num_splits.restype = i32
        lib.trtkv_paged_attention_num_splits.argtypes = [i64, i32, i32, i32, i32, i32, i32, i32]
        lib.trtkv_paged_attention_grouped_checked.restype = i32
        lib.trtkv_paged_attention_grouped_checked.argtypes = (
            [p] * 11 + [sz, i64, i32, i32, i32, i32, i64, i32, i32, i32, i32, f32, i32, f32, i32, i32, i32, i32, p, p]
        )
        self.lib = lib
        if lib.trtkv_abi_version() != 2:
            raise RuntimeError("emulation library has an unexpected ABI version")

    def status_string(self, status: int) -> str:
        return str(self.lib.trtkv_status_string(status).decode())

    def emulator_error(self) -> str:
        return str(self.lib.trtkv_emulation_last_error().decode())

    def kv_append(self, key: np.ndarray, value: np.ndarray, slot_mapping: np.ndarray,
                  kv_cache: np.ndarray | None, k_scale: np.ndarray, v_scale: np.ndarray,
                  key_stored: np.ndarray | None, value_stored: np.ndarray | None, *, compute: str, kv: str,
                  num_blocks: int | None = None, block_size: int | None = None,
                  scale_groups: int = 0) -> tuple[int, int]:
        """KVAppend; num_blocks/block_size default to the pool's (0 and 1 without a pool);
        ``scale_groups`` > 0: dynamic int8 scales (rows of head_dim + scale_groups bytes).

        Returns:
            (launch status, error flags the kernel reported).
        """
        flags = np.zeros(1, np.uint32)
        if num_blocks is None:
            num_blocks = kv_cache.shape[0] if kv_cache is not None else 0
        if block_size is None:
            block_size = kv_cache.shape[2] if kv_cache is not None else 1
        status = self.lib.trtkv_kv_append_grouped_checked(
            _ptr(key), _ptr(value), _ptr(slot_mapping), _ptr(kv_cache), _ptr(k_scale), _ptr(v_scale),
            _ptr(key_stored), _ptr(value_stored), key.shape[0], key.shape[1], key.shape[2], num_blocks,
            block_size, k_scale.size, v_scale.size, DTYPE_CODES[compute], DTYPE_CODES[kv], scale_groups,
            _ptr(flags), None)
        return int(status), int(flags[0])

    def num_splits(self, num_tokens: int, num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int,
                   block_size: int, max_blocks: int, num_splits: int = 0) -> int:
        return int(self.lib.trtkv_paged_attention_num_splits(
            num_tokens, num_seqs, num_heads, num_kv_heads, head_dim, block_size, max_blocks, num_splits))

    def paged_attention(self, x: dict[str, np.ndarray], output: np.ndarray, *, compute: str, kv: str,
                        scale: float = 0.0, sliding_window: int = 0, softcap: float = 0.0,
                        num_splits: int = 0, scale_groups: int = 0) -> tuple[int, int]:
        """PagedAttention over the arrays of ``x`` (kernel_checks.make_attention_inputs names).

        Returns:
            (launch status, error flags the kernels reported).
        """
        q, pool, tables = x["query"], x["kv_cache"], x["block_tables"]
        T, H, D = q.shape
        S, M = tables.shape
        Hkv, B = pool.shape[3], pool.shape[2]
        size = self.lib.trtkv_paged_attention_workspace_size(T, S, H, Hkv, D, B, M, num_splits)
        workspace = np.empty(max(int(size), 1), np.uint8)
        flags = np.zeros(1, np.uint32)
        status = self.lib.trtkv_paged_attention_grouped_checked(
            _ptr(q), _ptr(x["key"]), _ptr(x["value"]), _ptr(pool), _ptr(x["query_start_loc"]),
            _ptr(x["context_lens"]), _ptr(tables), _ptr(x["k_scale"]), _ptr(x["v_scale"]), _ptr(output),
            _ptr(workspace), size, T, S, H, Hkv, D, pool.shape[0], B, M, x["k_scale"].size, x["v_scale"].size,
            scale, sliding_window, softcap, num_splits, DTYPE_CODES[compute], DTYPE_CODES[kv], scale_groups,
            _ptr(flags), None)
        return int(status), int(flags[0])
