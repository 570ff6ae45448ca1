"""`trtkv export` options: one frozen dataclass whose field help is the CLI help.

Light on purpose (no onnx, numpy or ml_dtypes): `trtkv --help` builds every option from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trtkv.errors import ConfigError
from trtkv.ops.schema import KV_DTYPES, QUANTIZED_KV_DTYPES, canonical_dtype

#: Weight/compute dtypes an export can have (trtkv.export.llama_graph.COMPUTE_TYPES maps them).
COMPUTE_DTYPES = ("fp32", "fp16", "bf16")
#: Calibration (KV scales, gptq weights) at export: texts used when --calibrate gives no number,
#: and the tokens each is cut to.
CALIBRATION_TEXTS = 64
CALIBRATION_MAX_TOKENS = 512
#: --weight-algo values: calibration-free (rtn, hqq) or calibrated (gptq).
WEIGHT_ALGOS = ("rtn", "hqq", "gptq")


@dataclass(frozen=True)
class ExportConfig:
    """Options of `trtkv export`."""

    dtype: str = field(default="fp32", metadata={"help": "weight/compute dtype: fp32, fp16 or bf16"})
    kv_dtype: str = field(default="auto", metadata={"help": "KV pool dtype: auto (= dtype), fp32, fp16, bf16, fp8, int8"})
    block_size: int = field(default=16, metadata={"help": "default tokens per KV block recorded in the manifest"})
    calibrate: int = field(default=0, metadata={
        "help": "fp8/int8 KV: calibrate scales on this many texts (0 = documented defaults); --weight-algo gptq: "
                "fit on this many (0 = 64)"})
    kv_scales: str = field(default="per-head", metadata={
        "choices": ("per-head", "per-tensor", "dynamic"),
        "help": "fp8/int8 KV scales: calibrated per-head or per-tensor, or dynamic (int8: a scale per token, KV "
                "head and 32 values computed on write, no calibration)"})
    calibration_file: str = field(default="", metadata={
        "help": "fp8/int8 KV scales and --weight-algo gptq: calibrate on this text (plain, or .jsonl chats / texts; "
                "see trtkv calibrate; default: Python stdlib sources)"})
    weights: str = field(default="none", metadata={
        "choices": ("none", "int8", "int4"),
        "help": "weight-only quantization of every linear layer (ONNX Runtime MatMulNBits, one scale per "
                "--weight-group-size inputs): int8 (1/4 of fp32's weight bytes) or int4 (1/8)"})
    weight_group_size: int = field(default=32, metadata={"help": "inputs per weight scale (--weights; a power of two >= 16)"})
    head_weights: str = field(default="auto", metadata={
        "choices": ("auto", "int8", "int4"),
        "help": "the LM head with --weights: auto (as --weights, but int8 under int4: an int4 head costs ~8% "
                "perplexity on a small model), int8, or int4 (the fewest bytes per decode step)"})
    v_weights: str = field(default="auto", metadata={
        "choices": ("auto", "int8", "int4"),
        "help": "the attention value projections (v_proj) with --weights: auto (as --weights, but int8 under "
                "int4: the layer int4 hurts most, +1.3% of the weight bytes on SmolLM2-135M), int8, or int4"})
    weight_accuracy_level: int = field(default=4, metadata={
        "choices": (0, 4), "help": "--weights compute: 4 = int8 activations (ONNX Runtime's fast path), "
                                   "0 = fp32 from the dequantized weights (exact, slow for int8)"})
    weight_algo: str = field(default="rtn", metadata={
        "choices": WEIGHT_ALGOS,
        "help": "--weights rounding: rtn (symmetric round to nearest: ONNX Runtime's fast kernel), gptq (codes "
                "fitted to calibration activations, integer zero points: the fast kernel; takes --calibrate / "
                "--calibration-file) or hqq (scale and fractional zero point fitted per group, no calibration "
                "data; ONNX Runtime runs fractional zero points on a slow path; needs torch)"})
    external_data_min_mib: float = field(default=256.0, metadata={"help": "store weights in model.onnx.data when they exceed this many MiB"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over layers"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # float16 -> fp16, ...
        object.__setattr__(self, "kv_dtype", canonical_dtype(self.kv_dtype))  # float16 -> fp16, ...
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r} is not supported; use one of {', '.join(COMPUTE_DTYPES)}")
        if self.kv_dtype != "auto" and self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"--kv-dtype {self.kv_dtype!r} is not supported; use auto or one of {', '.join(KV_DTYPES)}")
        if self.calibrate < 0:
            raise ConfigError(f"--calibrate must be >= 0, got {self.calibrate}")
        if ((self.calibrate or self.calibration_file) and self.resolved_kv_dtype not in QUANTIZED_KV_DTYPES
                and self.weight_algo != "gptq"):
            raise ConfigError("--calibrate and --calibration-file apply to fp8/int8 KV pools and --weight-algo gptq; "
                              "add --kv-dtype fp8 or int8, or --weights int8|int4 --weight-algo gptq")
        if self.kv_scales not in ("per-tensor", "per-head", "dynamic"):
            raise ConfigError(f"--kv-scales must be per-tensor, per-head or dynamic, got {self.kv_scales!r}")
        if self.kv_scales == "dynamic" and self.resolved_kv_dtype != "int8":
            raise ConfigError("--kv-scales dynamic is for int8 KV pools: add --kv-dtype int8")
        if self.kv_scales == "dynamic" and (self.calibrate or self.calibration_file) and self.weight_algo != "gptq":
            raise ConfigError("--kv-scales dynamic needs no calibration: drop --calibrate / --calibration-file")
        if self.weights not in ("none", "int8", "int4"):
            raise ConfigError(f"--weights must be none, int8 or int4, got {self.weights!r}")
        if self.weights != "none" and self.dtype != "fp32":
            raise ConfigError(f"--weights {self.weights} quantizes fp32 weights for ONNX Runtime's CPU kernel; "
                              f"use --dtype fp32 (got {self.dtype})")
        for flag, value, what in (("--head-weights", self.head_weights, "LM head"),
                                  ("--v-weights", self.v_weights, "attention value projections")):
            if value not in ("auto", "int8", "int4"):
                raise ConfigError(f"{flag} must be auto, int8 or int4, got {value!r}")
            if value != "auto" and self.weights == "none":
                raise ConfigError(f"{flag} {value} quantizes the {what} of a --weights export; "
                                  "add --weights int8 or int4")
            if value == "int4" and self.weights == "int8":
                raise ConfigError(f"{flag} int4 with --weights int8 would quantize the {what} harder than the "
                                  f"other layers; use --weights int4, or drop {flag}")
        if self.weight_group_size < 16 or self.weight_group_size & (self.weight_group_size - 1):
            raise ConfigError(f"--weight-group-size must be a power of two >= 16, got {self.weight_group_size}")
        if self.weight_algo not in WEIGHT_ALGOS:
            raise ConfigError(f"--weight-algo must be one of {', '.join(WEIGHT_ALGOS)}, got {self.weight_algo!r}")
        if self.weight_algo != "rtn" and self.weights == "none":
            raise ConfigError(f"--weight-algo {self.weight_algo} quantizes the weights of a --weights export; "
                              "add --weights int8 or int4")
        if self.weight_accuracy_level not in (0, 4):
            raise ConfigError(f"--weight-accuracy-level must be 0 or 4, got {self.weight_accuracy_level}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"--block-size must be a power of two >= 1, got {self.block_size}")

    @property
    def resolved_kv_dtype(self) -> str:
        return self.dtype if self.kv_dtype == "auto" else self.kv_dtype

    @property
    def calibrates_kv(self) -> bool:
        """Static fp8/int8 KV scales are calibrated at export (else the documented defaults)."""
        return (bool(self.calibrate or self.calibration_file) and self.resolved_kv_dtype in QUANTIZED_KV_DTYPES
                and self.kv_scales != "dynamic")
