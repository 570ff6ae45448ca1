"""Generate plugins/generated/trtkv_ops.h from the op contract in trtkv/ops/schema.py.

The TensorRT plugins take every name, version, input/output index and attribute default from
the generated header, so the C++ side cannot drift from the schema. tests/plugins/
test_schema_header.py checks that the committed header equals a fresh generation.

Usage:
    python plugins/gen_schema_header.py           # rewrite the header
    python plugins/gen_schema_header.py --check   # exit 1 if the committed header is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER_PATH = REPO_ROOT / "plugins" / "generated" / "trtkv_ops.h"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from trtkv.ops import reference, schema  # noqa: E402


def _camel(name: str) -> str:
    """``key_stored`` -> ``KeyStored``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _snake(name: str) -> str:
    """``PagedAttention`` -> ``paged_attention``; ``KVAppend`` -> ``kv_append``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _cpp_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attr_lines(attr: schema.AttrSpec) -> list[str]:
    const = _camel(attr.name)
    lines = [f"//! {attr.doc}", f"inline constexpr char kAttr{const}[] = {_cpp_string(attr.name)};"]
    if attr.type == "int":
        lines.append(f"inline constexpr int32_t kDefault{const} = {int(attr.default)};")
    elif attr.type == "float":
        lines.append(f"inline constexpr float kDefault{const} = {float(attr.default)!r}f;")
    elif attr.type == "string":
        lines.append(f"inline constexpr char kDefault{const}[] = {_cpp_string(str(attr.default))};")
    else:
        raise ValueError(f"unsupported attribute type {attr.type!r} for {attr.name}")
    return lines


def _enum(name: str, specs: tuple[schema.TensorSpec, ...], count_name: str) -> list[str]:
    lines = [f"enum {name} : int32_t {{"]
    for index, spec in enumerate(specs):
        lines.append(f"    k{_camel(spec.name)} = {index}, //!< {spec.name} {list(spec.shape)}: {spec.doc}")
    lines.append(f"    {count_name} = {len(specs)},")
    lines.append("};")
    return lines


#: Bit of each schema dtype in the generated dtype masks (kDType* constants).
DTYPE_BITS = {
    "float32": 1 << 0,
    "float16": 1 << 1,
    "bfloat16": 1 << 2,
    "float8e4m3fn": 1 << 3,
    "int8": 1 << 4,
    "int32": 1 << 5,
    "int64": 1 << 6,
}


def _dtype_mask(spec: schema.TensorSpec) -> int:
    mask = 0
    for dtype in spec.dtypes:
        if dtype not in DTYPE_BITS:
            raise ValueError(f"no dtype bit for {dtype!r} ({spec.name})")
        mask |= DTYPE_BITS[dtype]
    return mask


def _masks(name: str, specs: tuple[schema.TensorSpec, ...]) -> list[str]:
    joined = ", ".join(f"0x{_dtype_mask(s):02x}u" for s in specs)
    return [f"inline constexpr uint32_t {name}[] = {{{joined}}};"]


def _names(name: str, specs: tuple[schema.TensorSpec, ...] | tuple[schema.AttrSpec, ...]) -> list[str]:
    if not specs:
        return []
    joined = ", ".join(_cpp_string(s.name) for s in specs)
    return [f"inline constexpr char const* {name}[] = {{{joined}}};"]


def _op_block(op: schema.OpSchema) -> list[str]:
    lines = [f"//! {op.name}: {op.doc}", f"namespace {_snake(op.name)} {{", ""]
    lines.append(f"inline constexpr char kName[] = {_cpp_string(op.name)};")
    lines.append(f"inline constexpr char kVersion[] = {_cpp_string(str(op.version))};")
    lines += _enum("Input", op.inputs, "kNumInputs")
    lines += _enum("Output", op.outputs, "kNumOutputs")
    lines += _names("kInputNames", op.inputs)
    lines += _names("kOutputNames", op.outputs)
    lines += _masks("kInputDTypeMasks", op.inputs)
    lines += _masks("kOutputDTypeMasks", op.outputs)
    lines.append(f"inline constexpr int32_t kNumAttributes = {len(op.attributes)};")
    lines += _names("kAttributeNames", op.attributes)
    for attr in op.attributes:
        lines += _attr_lines(attr)
    lines += ["", f"}} // namespace {_snake(op.name)}", ""]
    return lines


def _bits_macro(name: str, values: np.ndarray) -> list[str]:
    words = [f"0x{int(w):08x}u" for w in values.astype(np.float32).view(np.uint32)]
    rows = [", ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
    body = [f"    {r}, \\" for r in rows[:-1]] + [f"    {rows[-1]}"]
    return [f"#define {name} \\", *body]


def _dynamic_scale_lines() -> list[str]:
    """Dynamic int8 KV scales: the constants and the reference's tables as float32 bit patterns
    (macros, so device code can put them in __constant__ memory and host code in an array)."""
    scales, thresholds = reference.dynamic_scale_table()
    return [
        "//! Dynamic int8 KV scales (schema.DYNAMIC_*): G = head_dim / kDynamicGroupSize exponents per",
        "//! (token, KV head) row after its head_dim codes (G = 1 when head_dim is not a multiple);",
        "//! the scale of exponent e is 2^(e / kDynamicScaleSteps), e in [kDynamicExponentMin, 127].",
        f"inline constexpr int32_t kDynamicScaleSteps = {schema.DYNAMIC_SCALE_STEPS};",
        f"inline constexpr int32_t kDynamicGroupSize = {schema.DYNAMIC_GROUP_SIZE};",
        f"inline constexpr int32_t kDynamicExponentMin = {schema.DYNAMIC_EXPONENT_MIN};",
        "//! float32 bits of scale[e - kDynamicExponentMin] (256 values) and of 127 * scale for the first",
        "//! 255 (ascending): a group's exponent index is the number of these thresholds below its amax.",
        *_bits_macro("TRTKV_DYNAMIC_SCALE_BITS", scales),
        *_bits_macro("TRTKV_DYNAMIC_THRESHOLD_BITS", thresholds),
    ]


def render() -> str:
    """The header text for the current schema."""
    lines = [
        "// GENERATED by plugins/gen_schema_header.py from trtkv/ops/schema.py. Do not edit:",
        "// change the schema and rerun `python plugins/gen_schema_header.py`.",
        "#pragma once",
        "",
        "#include <cstdint>",
        "",
        "namespace trtkv {",
        "namespace ops {",
        "",
        f"inline constexpr char kOpDomain[] = {_cpp_string(schema.OP_DOMAIN)};",
        f"inline constexpr char kPluginNamespace[] = {_cpp_string(schema.PLUGIN_NAMESPACE)};",
        f"inline constexpr int32_t kOpSetVersion = {schema.OP_SET_VERSION};",
        f"inline constexpr char kKVLayout[] = {_cpp_string(schema.KV_LAYOUT)};",
        f"inline constexpr float kFp8E4M3Max = {schema.FP8_E4M3_MAX!r}f;",
        f"inline constexpr float kInt8Max = {schema.INT8_MAX!r}f;",
        "",
        *_dynamic_scale_lines(),
        "",
        "//! Bits of the k*DTypeMasks arrays: which element types a tensor may have.",
        "enum DTypeBit : uint32_t {",
        *(f"    kDType{_camel(name)} = 0x{bit:02x}u," for name, bit in DTYPE_BITS.items()),
        "};",
        "",
    ]
    for op in schema.OPS.values():
        lines += _op_block(op)
    lines += ["} // namespace ops", "} // namespace trtkv", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the header is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = HEADER_PATH.read_text() if HEADER_PATH.exists() else ""
        if current != text:
            print(f"{HEADER_PATH} is stale: run python plugins/gen_schema_header.py", file=sys.stderr)
            return 1
        return 0
    HEADER_PATH.parent.mkdir(parents=True, exist_ok=True)
    HEADER_PATH.write_text(text)
    print(f"wrote {HEADER_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
