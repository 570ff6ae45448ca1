"""`trtkv generate MODEL --prompt ...`: batch generation (in-flight batching), text or JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from trtkv.cli import app
from trtkv.cli._args import ChatTemplate, Json, Model, Seed, Stop, System, Temperature, TopK, TopP
from trtkv.cli._options import command
from trtkv.errors import TrtkvError
from trtkv.runtime.config import EngineConfig


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise TrtkvError(f"--prompt-ids wants comma-separated integers, got {text!r}") from None


@command(app, "generate", help="generate from a model (in-flight batching); prints each prompt "
         "and its continuation", rich_help_panel="Run")
def generate(
    model: Model,
    engine: EngineConfig,
    prompt: Annotated[list[str] | None, typer.Option(help="a text prompt (repeatable)",
                                                     show_default=False)] = None,
    prompt_ids: Annotated[list[str] | None, typer.Option(
        metavar="IDS", show_default=False, help="a prompt as comma-separated token ids (repeatable)")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="tokens to generate per prompt; default: the model's generation_config.json, else 16",
        rich_help_panel="Sampling", show_default=False)] = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    seed: Seed = None,
    n: Annotated[int, typer.Option("--n", help="completions per prompt (share prompt KV blocks)",
                                   rich_help_panel="Sampling")] = 1,
    stop: Stop = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="keep going past EOS",
                                             rich_help_panel="Sampling")] = False,
    use_beam_search: Annotated[bool, typer.Option("--use-beam-search", rich_help_panel="Beam search", help=(
        "beam search with --n beams: the n best hypotheses, best first (as transformers' num_beams, "
        "do_sample=False; temperature and seed unused)"))] = False,
    length_penalty: Annotated[float, typer.Option(rich_help_panel="Beam search", help=(
        "a finished hypothesis scores logprob_sum / length ** this"))] = 1.0,
    early_stopping: Annotated[str, typer.Option(rich_help_panel="Beam search", help=(
        "true: stop once n hypotheses finished; false: when no beam can beat them (heuristic); never"))] = "false",
    chat: Annotated[bool, typer.Option("--chat", rich_help_panel="Chat", help=(
        "each --prompt is a user message, rendered by the chat template"))] = False,
    system: System = None,
    chat_template: ChatTemplate = None,
    guided_json: Annotated[str | None, typer.Option(metavar="SCHEMA", rich_help_panel="Structured output",
                                                    show_default=False, help=(
        "the output is JSON following this schema (JSON text, or a .json file); '{}' = any object"))] = None,
    guided_regex: Annotated[str | None, typer.Option(metavar="REGEX", rich_help_panel="Structured output",
                                                     show_default=False, help="the output matches this regex")] = None,
    guided_choice: Annotated[list[str] | None, typer.Option(
        metavar="TEXT", rich_help_panel="Structured output", show_default=False,
        help="the output is one of these strings (repeatable)")] = None,
    guided_grammar: Annotated[str | None, typer.Option(metavar="FILE", rich_help_panel="Structured output",
                                                       show_default=False,
                                                       help="the output follows this Lark or GBNF grammar file")] = None,
    json_out: Json = False,
    stats: Annotated[bool, typer.Option("--stats", help="print engine metrics to stderr at the end")] = False,
) -> None:
    from trtkv.model_source import resolve_model
    from trtkv.runtime.chat import Message, read_chat_template
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingDefaults

    texts, id_prompts = list(prompt or ()), [parse_ids(t) for t in prompt_ids or ()]
    prompts: list[str | list[int]] = [*texts, *id_prompts]
    if not prompts:
        raise TrtkvError("give at least one --prompt TEXT or --prompt-ids 1,2,3")
    conversations: list[list[Message]] | None = None
    if chat:
        if id_prompts:
            raise TrtkvError("--chat renders text messages: give --prompt TEXT, not --prompt-ids")
        from trtkv.cli.chat import Conversation

        conversations = [Conversation(system).messages(p) for p in texts]
    elif system is not None or chat_template is not None:
        raise TrtkvError("--system and --chat-template apply to chat prompts; add --chat")
    template = read_chat_template(chat_template) if chat_template else None
    guided = _constraint(guided_json, guided_regex, guided_choice, guided_grammar)
    model_dir = resolve_model(model)
    params = SamplingDefaults.for_model(model_dir).params(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        ignore_eos=ignore_eos, n=n, stop=tuple(stop or ()), guided=guided, use_beam_search=use_beam_search,
        length_penalty=length_penalty, early_stopping=_early_stopping(early_stopping))
    llm = LLM(model_dir, engine)
    outs = (llm.chat(conversations, params, chat_template=template) if conversations is not None
            else llm.generate(prompts, params))
    for i, out in enumerate(outs):
        shown = _shown_prompt(prompts[i], conversations[i] if conversations is not None else None)
        for comp in out.outputs:
            if json_out:
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
    if stats:
        print(json.dumps(llm.engine.stats(), default=str, indent=1), file=sys.stderr)


def _early_stopping(value: str) -> bool | str:
    options: dict[str, bool | str] = {"true": True, "false": False, "never": "never"}
    if value.lower() not in options:
        raise TrtkvError(f"--early-stopping must be true, false or never, got {value!r}")
    return options[value.lower()]


def _constraint(schema: str | None, regex: str | None, choice: list[str] | None,
                grammar: str | None) -> Any:
    """The ``--guided-*`` options as one `GuidedDecoding` (None without any)."""
    from trtkv.runtime.sampling import GuidedDecoding

    given = [name for name, v in (("--guided-json", schema), ("--guided-regex", regex),
                                  ("--guided-choice", choice), ("--guided-grammar", grammar)) if v]
    if len(given) > 1:
        raise TrtkvError(f"give one structured-output option, not {' and '.join(given)}")
    if schema:
        if schema.endswith(".json"):
            schema = _read(schema, "--guided-json")
        return GuidedDecoding.json_schema(schema if schema.strip() != "{}" else '{"type": "object"}')
    if regex:
        return GuidedDecoding.regex(regex)
    if choice:
        return GuidedDecoding.choice(list(choice))
    if grammar:
        return GuidedDecoding.grammar(_read(grammar, "--guided-grammar"))
    return None


def _read(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtkvError(f"{option} {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None


def _shown_prompt(prompt: str | list[int], conversation: list[Any] | None) -> str:
    """What the text output prints before a continuation: the prompt as given."""
    if conversation is not None:
        return f"> {conversation[-1]['content']}\n"
    return prompt if isinstance(prompt, str) else f"{prompt} -> "
