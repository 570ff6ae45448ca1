"""Typer options from the frozen config dataclasses, and the `command` decorator.

A command function annotates a parameter with a config class (``engine: EngineConfig``); the
decorator replaces that parameter by one ``--field-name`` option per field, with the field's
type, default, help text, choices and aliases (the dataclass is the one place for each), in a
help panel named after the class, and rebuilds the instance before calling the function.
Validation stays in the dataclass (``__post_init__`` raises `ConfigError`: one line, exit 2).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer


def panel_name(cls: type) -> str:
    """``EngineConfig`` -> ``"Engine options"``: the help panel of a config's options."""
    return cls.__name__.removesuffix("Config") + " options"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name} has no default; a CLI option needs one")


def config_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter (an ``Annotated`` Typer option) per field of ``cls``."""
    hints = typing.get_type_hints(cls)
    panel = panel_name(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f.name.replace("_", "-")
        kind: Any = hints[f.name]
        choices = f.metadata.get("choices")
        if choices:
            kind = Literal[tuple(choices)]  # Typer lists the values and refuses others
        decls = [f"--{flag}", *f.metadata.get("aliases", ())]
        if kind is bool and _default(f):  # on by default: --no-FLAG turns it off
            decls = [f"--{flag}/--no-{flag}"]
        option = typer.Option(*decls, help=str(f.metadata.get("help", "")), rich_help_panel=panel)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=_default(f), annotation=Annotated[kind, option]))
    return params


def command(app: typer.Typer, name: str, help: str, *, skip: tuple[str, ...] = (),
            **settings: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as ``trtkv NAME``, expanding its config-class parameters into options.

    Args:
        app: the Typer app to add the command to.
        name: the command's name.
        help: its one-line help (the first line of the docstring, if any, is the long help).
        skip: config fields that are not options of this command.
        settings: passed on to ``Typer.command`` (e.g. ``epilog``).
    """
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        params: list[inspect.Parameter] = []
        configs: dict[str, type] = {}
        for p in signature.parameters.values():
            if dataclasses.is_dataclass(p.annotation) and isinstance(p.annotation, type):
                configs[p.name] = p.annotation
                params += config_parameters(p.annotation, skip)
            else:
                params.append(p)
        names = [p.name for p in params]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise TypeError(f"trtkv {name}: options defined twice: {sorted(duplicated)}")
        # Typer wants positional arguments first; keyword-only options may follow in any order.
        params.sort(key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

        @functools.wraps(fn)
        def run(**kwargs: Any) -> Any:
            for arg, cls in configs.items():
                fields = {f.name for f in dataclasses.fields(cls)}
                kwargs[arg] = cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
            return fn(**kwargs)

        del run.__wrapped__  # Typer reads __signature__; do not let inspect unwrap to fn
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name, help=help, **settings)(run)
        return fn

    return decorate
