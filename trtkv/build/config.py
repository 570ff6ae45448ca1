"""`trtkv build` options: one frozen dataclass whose field help strings are the CLI help.

Must not import tensorrt or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trtkv.errors import ConfigError

#: Pool size (blocks) the engine's profile accepts when ``max_num_blocks`` is 0.
DEFAULT_MAX_NUM_BLOCKS = 1 << 20
#: GPU targets (compute capability x 10) TensorRT for RTX can build for, and the default set.
RTX_COMPUTE_CAPABILITIES = (75, 80, 86, 89, 120, 121)
DEFAULT_RTX_COMPUTE_CAPABILITIES = "80,86,89,120"


@dataclass(frozen=True)
class BuildConfig:
    """Options of `trtkv build` (ONNX + manifest -> TensorRT engine directory)."""

    max_num_tokens: int = field(default=2048, metadata={"help": "most new tokens in one step (prefill chunks + decodes); the engine's --max-num-batched-tokens", "aliases": ("--max-num-batched-tokens",)})
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
    timing_cache: str = field(default="", metadata={"help": "timing cache file, read and updated; empty = OUT_DIR/timing.cache (full TensorRT only)"})
    """Timing cache path, loaded if present and saved after the build."""
    plugin_library: str = field(default="", metadata={"help": "path of libtrtkv_plugins.so; empty = $TRTKV_PLUGIN_LIB or build/plugins/"})
    """Path of the trtkv TensorRT plugin library; empty = search the usual places."""
    verbose: bool = field(default=False, metadata={"help": "print TensorRT's verbose log"})
    """Forward TensorRT's verbose log to stderr."""
    flavor: str = field(default="auto", metadata={"help": "TensorRT flavor: auto|trt|rtx (auto: full TensorRT if installed, else TensorRT for RTX)", "choices": ("auto", "trt", "rtx")})
    """Which TensorRT builds the engine: full TensorRT (GPU needed) or TensorRT for RTX (no GPU needed)."""
    attention: str = field(default="auto", metadata={"help": "trtkv ops as plugin layers or lowered to standard layers: auto|plugin|lowered (auto: plugin for trt, lowered for rtx)", "choices": ("auto", "plugin", "lowered")})
    """How the trtkv ops enter the engine (see trtkv.build.network)."""
    compute_capabilities: str = field(default="", metadata={"help": f"rtx only: GPU targets as comma-separated compute capabilities x10; empty = {DEFAULT_RTX_COMPUTE_CAPABILITIES}"})
    """TensorRT for RTX's ahead-of-time targets (e.g. "80,89"); full TensorRT builds for the local GPU."""

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
        if self.flavor not in ("auto", "trt", "rtx"):
            raise ConfigError(f"--flavor must be auto, trt or rtx, got {self.flavor!r}")
        if self.attention not in ("auto", "plugin", "lowered"):
            raise ConfigError(f"--attention must be auto, plugin or lowered, got {self.attention!r}")
        self.target_capabilities()  # validates

    def target_capabilities(self) -> tuple[int, ...]:
        """The parsed ``compute_capabilities`` (default set when empty).

        Raises:
            ConfigError: not a list of integers, or a target TensorRT for RTX cannot build for.
        """
        text = self.compute_capabilities or DEFAULT_RTX_COMPUTE_CAPABILITIES
        try:
            targets = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError:
            raise ConfigError(f"--compute-capabilities must be comma-separated integers like 80,89, got {text!r}") from None
        bad = [t for t in targets if t not in RTX_COMPUTE_CAPABILITIES]
        if bad or not targets:
            hopper = " (Hopper and Blackwell datacenter GPUs need --flavor trt on the GPU machine)" if any(t in (90, 100, 103) for t in bad) else ""
            raise ConfigError(
                f"TensorRT for RTX cannot build for compute capability {', '.join(map(str, bad)) or '(none)'}{hopper}; "
                f"choose from {', '.join(map(str, RTX_COMPUTE_CAPABILITIES))}"
            )
        return targets
