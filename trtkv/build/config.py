"""`trtkv build` options: one frozen dataclass whose field help strings are the CLI help.

Must not import tensorrt or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trtkv.errors import ConfigError

#: Pool size (blocks) the engine's profile accepts when ``max_num_blocks`` is 0.
DEFAULT_MAX_NUM_BLOCKS = 1 << 20


@dataclass(frozen=True)
class BuildConfig:
    """Options of `trtkv build` (ONNX + manifest -> TensorRT engine directory)."""

    max_num_tokens: int = field(default=2048, metadata={"help": "most new tokens in one step (prefill chunks + decodes)"})
    """Most new tokens in one step (the scheduler's max_num_batched_tokens)."""
    max_num_seqs: int = field(default=64, metadata={"help": "most sequences in one step"})
    """Most sequences in one step (the scheduler's max_num_seqs)."""
    max_model_len: int = field(default=0, metadata={"help": "longest sequence (tokens) the engine serves; 0 = the model's max_position_embeddings"})
    """Longest sequence the engine serves; sets the block-table width. 0 = the model's limit."""
    max_num_blocks: int = field(default=0, metadata={"help": f"largest KV pool (blocks) the engine accepts; 0 = {DEFAULT_MAX_NUM_BLOCKS}"})
    """Largest KV pool in blocks the profile accepts (the runtime sizes the real pool)."""
    block_size: int = field(default=0, metadata={"help": "tokens per KV block; 0 = the manifest's"})
    """Tokens per KV block, fixed in the engine; 0 = the block size recorded at export."""
    opt_num_tokens: int = field(default=0, metadata={"help": "token count TensorRT tunes for; 0 = max_num_seqs (a full decode step)"})
    """Token count of the profile's opt point; 0 = max_num_seqs."""
    workspace_gib: float = field(default=4.0, metadata={"help": "TensorRT builder workspace limit in GiB"})
    """TensorRT builder workspace (tactic scratch) limit in GiB."""
    optimization_level: int = field(default=3, metadata={"help": "TensorRT builder optimization level 0-5"})
    """TensorRT builder optimization level (0 fastest build .. 5 most tactics)."""
    timing_cache: str = field(default="", metadata={"help": "timing cache file, read and updated; empty = OUT_DIR/timing.cache"})
    """Timing cache path, loaded if present and saved after the build."""
    plugin_library: str = field(default="", metadata={"help": "path of libtrtkv_plugins.so; empty = $TRTKV_PLUGIN_LIB or build/plugins/"})
    """Path of the trtkv TensorRT plugin library; empty = search the usual places."""
    verbose: bool = field(default=False, metadata={"help": "print TensorRT's verbose log"})
    """Forward TensorRT's verbose log to stderr."""

    def __post_init__(self) -> None:
        for name in ("max_num_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_model_len", "max_num_blocks", "block_size", "opt_num_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.block_size and self.block_size & (self.block_size - 1):
            raise ConfigError(f"--block-size must be a power of two, got {self.block_size}")
        if self.max_num_seqs > self.max_num_tokens:
            raise ConfigError(
                f"--max-num-seqs ({self.max_num_seqs}) cannot exceed --max-num-tokens "
                f"({self.max_num_tokens}): every scheduled sequence has at least one new token"
            )
        if self.opt_num_tokens > self.max_num_tokens:
            raise ConfigError(f"--opt-num-tokens must be <= --max-num-tokens ({self.max_num_tokens})")
        if self.workspace_gib <= 0:
            raise ConfigError(f"--workspace-gib must be > 0, got {self.workspace_gib}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"--optimization-level must be 0..5, got {self.optimization_level}")
