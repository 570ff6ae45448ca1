"""trtkv: LLM inference over a paged KV cache (HF -> ONNX with trtkv ops -> TensorRT / ONNX Runtime)."""

from __future__ import annotations

__version__ = "0.1.0"
