"""How a KV block travels outside the process: bytes with a self-describing header.

Owns: the model fingerprint (which model, KV dtype, scales and layout produced a block),
the store key namespace derived from it, and the encoding of one block across all layers,
``[L, 2, B, Hkv, D]`` in the pool's storage dtype. A block is decoded only when every field
of its header equals this engine's: blocks of another model, KV dtype, scales or layout are
never used (they read as a miss).

Wire format: ``MAGIC`` + u32 little-endian header length + JSON header + raw block bytes. The
header carries a BLAKE2b digest of the block bytes keyed by the rest of the header, so a block
whose bytes or header were changed in the store (a poisoned or torn write) reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trtkv.manifest import Manifest

MAGIC = b"TRTKVB2\0"  # 2: digest in the header
_LEN = struct.Struct("<I")


def model_fingerprint(model_dir: Path, manifest: Manifest, block_size: int) -> str:
    """A short hex id of what a KV block depends on: the effective manifest (model dims,
    weight and KV dtypes, KV scales, op versions), the block size, and the size and mtime
    of the model's weight files (a re-export changes it).
    """
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps(asdict(manifest), sort_keys=True, default=str).encode())
    h.update(struct.pack("<q", block_size))
    for path in sorted(Path(model_dir).glob("*")):
        if path.is_file() and path.suffix in (".onnx", ".data", ".bin", ".engine", ".plan"):
            st = path.stat()
            h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class BlockFormat:
    """Everything a block's bytes depend on; must match exactly for a block to be used.

    Attributes:
        fingerprint: `model_fingerprint` of the engine.
        kv_dtype: KV dtype name (fp32, fp16, bf16, fp8, int8).
        storage_dtype: numpy dtype name of the pool (e.g. float8_e4m3fn for fp8).
        shape: [num_layers, 2, block_size, num_kv_heads, head_dim (+ 1 with dynamic scales)].
        k_scales, v_scales: per layer KV scales (quantized pools dequantize with them).
    """

    fingerprint: str
    kv_dtype: str
    storage_dtype: str
    shape: tuple[int, ...]
    k_scales: tuple[tuple[float, ...], ...]
    v_scales: tuple[tuple[float, ...], ...]

    @classmethod
    def create(cls, fingerprint: str, manifest: Manifest, block_size: int,
               storage_dtype: np.dtype) -> BlockFormat:
        m = manifest
        return cls(fingerprint, m.kv_dtype, np.dtype(storage_dtype).name,
                   (m.num_layers, 2, block_size, m.num_kv_heads, m.pool_head_dim),
                   tuple(tuple(s) for s in m.k_scales), tuple(tuple(s) for s in m.v_scales))

    @property
    def namespace(self) -> str:
        """Store key prefix: blocks of other formats live under other names."""
        return f"trtkv:kv:{self.fingerprint}:"

    def _header(self, key: bytes) -> dict[str, object]:
        return {"format": 2, "key": key.hex(), "fingerprint": self.fingerprint,
                "kv_dtype": self.kv_dtype, "storage_dtype": self.storage_dtype,
                "shape": list(self.shape), "k_scales": [list(s) for s in self.k_scales],
                "v_scales": [list(s) for s in self.v_scales]}

    @property
    def num_bytes(self) -> int:
        """Bytes of one block's data (header excluded)."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the blocks."""
        from trtkv.ops.reference import KV_NUMPY_DTYPES

        return KV_NUMPY_DTYPES[self.kv_dtype]

    def encode(self, key: bytes, block: np.ndarray) -> bytes:
        """Bytes of one block ([L, 2, B, Hkv, D], the pool's dtype) stored under ``key``."""
        if block.shape != self.shape or block.dtype != self.dtype:
            raise ValueError(f"block {block.shape} {block.dtype} does not match {self}")
        data = np.ascontiguousarray(block).tobytes()
        fields = self._header(key)
        fields["digest"] = _digest(fields, data)
        header = json.dumps(fields, sort_keys=True).encode()
        return MAGIC + _LEN.pack(len(header)) + header + data

    def decode(self, key: bytes, payload: bytes) -> np.ndarray | None:
        """The block in ``payload``, or None when its header differs in any field (another
        model, KV dtype, scales, layout or key) or the payload is truncated or corrupt."""
        if not payload.startswith(MAGIC) or len(payload) < len(MAGIC) + _LEN.size:
            return None
        (n,) = _LEN.unpack_from(payload, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        try:
            header = json.loads(payload[start : start + n])
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        digest = header.pop("digest", None)
        expected = json.loads(json.dumps(self._header(key), sort_keys=True))
        if header != expected:
            return None
        data = payload[start + n :]
        if len(data) != self.num_bytes or digest != _digest(expected, data):
            return None
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape)


def _digest(header: dict[str, object], data: bytes) -> str:
    """BLAKE2b-128 of the block bytes, keyed by the header's canonical JSON."""
    key = hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=32).digest()
    return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()
