"""`trtkv` command line: export, generate, chat, build, serve, triton-repo, bench.

Options come from the frozen config dataclasses (their field help is the option help). Every
`TrtkvError` is printed as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trtkv.errors import TrtkvError

EXIT_USER_ERROR = 2


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` option per dataclass field, defaulting to the field's default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        help_text = str(f.metadata.get("help", ""))
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            kind: Callable[[str], Any] = type(default) if default is not None else str
            choices = f.metadata.get("choices")
            parser.add_argument(*flags, dest=f.name, type=kind, default=default, choices=choices,
                                help=f"{help_text} (default: {default})")


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids wants comma-separated integers, got {text!r}") from None


# -- export ------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace) -> int:
    from trtkv.export.config import ExportConfig
    from trtkv.model_source import export_model

    config = dataclass_from_args(ExportConfig, args)
    manifest = export_model(args.hf_dir, args.output, config)
    print(f"exported {manifest.architecture} ({manifest.num_layers} layers, {manifest.dtype}, "
          f"KV {manifest.kv_dtype}) to {args.output}", file=sys.stderr)
    return 0


# -- generate ----------------------------------------------------------------------------
def _cmd_generate(args: argparse.Namespace) -> int:
    from trtkv.chat_cli import generate_conversations
    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingParams

    prompts: list[str | list[int]] = [*args.prompt, *args.prompt_ids]
    if not prompts:
        raise TrtkvError("give at least one --prompt TEXT or --prompt-ids 1,2,3")
    chat = generate_conversations(args)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos, n=args.n,
        stop=tuple(args.stop),
    )
    from trtkv.model_source import resolve_model

    llm = LLM(resolve_model(args.model_dir), dataclass_from_args(EngineConfig, args))
    outs = llm.chat(chat[0], params, chat_template=chat[1]) if chat else llm.generate(prompts, params)
    for i, out in enumerate(outs):
        shown = _shown_prompt(prompts[i], chat[0][i] if chat else None)
        for comp in out.outputs:
            if args.json:
                print(json.dumps({
                    "request_id": out.request_id, "index": comp.index,
                    "prompt_ids": list(out.prompt_ids), "output_ids": list(comp.token_ids),
                    "text": comp.text, "finish_reason": comp.finish_reason,
                    "num_cached_tokens": out.num_cached_tokens,
                }), flush=True)
            else:
                # The prompt, then its continuation (a chat reply on its own line).
                print(f"--- {out.request_id}[{comp.index}] ({comp.finish_reason}, "
                      f"{len(comp.token_ids)} tokens)\n{shown}{comp.text}", flush=True)
    if args.stats:
        print(json.dumps(llm.engine.stats(), default=str, indent=1), file=sys.stderr)
    return 0


def _shown_prompt(prompt: str | list[int], conversation: list[dict[str, str]] | None) -> str:
    """What the text output prints before a continuation: the prompt as given."""
    if conversation is not None:
        return f"> {conversation[-1]['content']}\n"
    return prompt if isinstance(prompt, str) else f"{prompt} -> "


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from trtkv.export.calibrate import calibrate

    m = calibrate(args.model_dir, args.num_texts, args.kv_scales)
    print(f"calibrated {m.kv_dtype} KV scales ({args.kv_scales}) on {args.num_texts} texts: "
          f"layer 0 k={list(m.k_scales[0])} v={list(m.v_scales[0])}", file=sys.stderr)
    return 0


# -- estimate ----------------------------------------------------------------------------
def _cmd_estimate(args: argparse.Namespace) -> int:
    from trtkv.estimate import as_json, estimate, format_estimate, read_dims

    e = estimate(read_dims(args.model), memory_gib=args.memory_gib, kv_dtype=args.kv_dtype,
                 block_size=args.block_size, seq_len=args.seq_len)
    print(as_json(e) if args.json else format_estimate(e, args.memory_gib))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trtkv")
    except PackageNotFoundError:  # a source tree without an install
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from trtkv import chat_cli
    from trtkv.export.config import ExportConfig
    from trtkv.model_source import MODEL_HELP
    from trtkv.runtime.config import EngineConfig

    parser = argparse.ArgumentParser(prog="trtkv", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"trtkv {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="HF checkpoint dir -> ONNX with trtkv ops + manifest")
    p.add_argument("hf_dir", help="Hugging Face checkpoint directory (config.json, *.safetensors, "
                   "tokenizer), hub id in the local HF cache (ORG/NAME) or .gguf file")
    p.add_argument("-o", "--output", required=True, help="output directory")
    add_dataclass_options(p, ExportConfig)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("calibrate", help="calibrate the fp8/int8 KV scales of an exported model in place")
    p.add_argument("model_dir", help="exported model directory with an fp8/int8 KV pool")
    p.add_argument("--num-texts", type=int, default=16, help="calibration texts (stdlib sources)")
    p.add_argument("--kv-scales", default="per-tensor", choices=("per-tensor", "per-head"),
                   help="one scale per layer, or one per KV head")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("estimate", help="KV bytes per token and what fits in a memory budget")
    p.add_argument("model", help="exported model directory or Hugging Face checkpoint directory")
    p.add_argument("--memory-gib", type=float, required=True, help="memory the KV pool may use, in GiB")
    p.add_argument("--kv-dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16", "fp8", "int8"),
                   help="KV pool dtype; auto = the model's")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--seq-len", type=int, default=0, help="sequence length to count; 0 = the model's maximum")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=_cmd_estimate)

    p = sub.add_parser("generate", help="generate from an exported model (in-flight batching)")
    p.add_argument("model_dir", help=MODEL_HELP)
    p.add_argument("--prompt", action="append", default=[], help="a text prompt (repeatable)")
    p.add_argument("--prompt-ids", action="append", type=_parse_ids, default=[],
                   help="a prompt as comma-separated token ids (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="per-request seed (reproducible sampling)")
    p.add_argument("--n", type=int, default=1, help="completions per prompt (share prompt KV blocks)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past EOS")
    p.add_argument("--json", action="store_true", help="one JSON object per output per line")
    p.add_argument("--stats", action="store_true", help="print engine metrics to stderr at the end")
    chat_cli.add_generate_chat_options(p)
    add_dataclass_options(p, EngineConfig)
    p.set_defaults(func=_cmd_generate)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live with their feature (chat, build, serve, triton-repo, bench)."""
    from trtkv import chat_cli
    from trtkv.bench import cli as bench_cli
    from trtkv.build import cli as build_cli
    from trtkv.serving import cli as serving_cli

    return [chat_cli.register, build_cli.register, serving_cli.register, bench_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrtkvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
