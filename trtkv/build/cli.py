"""`trtkv build ONNX_DIR -o engines/NAME`: registered into the main CLI by `trtkv.cli`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_build(args: argparse.Namespace) -> int:
    from trtkv.build.config import BuildConfig
    from trtkv.build.engine_builder import build_engine
    from trtkv.cli import dataclass_from_args

    out = build_engine(args.onnx_dir, args.output, dataclass_from_args(BuildConfig, args))
    print(f"built TensorRT engine in {out}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    from trtkv.build.config import BuildConfig
    from trtkv.cli import add_dataclass_options

    p = sub.add_parser("build", help="exported ONNX dir -> TensorRT engine dir (needs TensorRT + GPU)")
    p.add_argument("onnx_dir", help="exported model directory (trtkv export -o ...)")
    p.add_argument("-o", "--output", required=True, help="engine directory, e.g. engines/NAME")
    add_dataclass_options(p, BuildConfig)
    p.set_defaults(func=_cmd_build)
