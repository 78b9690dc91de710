"""Options that several commands share, and the ``train`` options generated from the
settings' declarations (:mod:`vaekit.app.config`)."""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from vaekit.app.config import Config, help_text
from vaekit.errors import VaekitError

Opt = typer.Option


class Command(typer.core.TyperCommand):
    """A command whose usage line names its arguments as click does, ``vaekit plot RUN``
    (typer writes a required argument in braces, ``{RUN}``, which reads as a placeholder to fill in)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [re.sub(r"^\{(.*)\}(\.\.\.)?$", r"\1\2", p) for p in super().collect_usage_pieces(ctx)]


DistBackend = Annotated[str, Opt(help="Under torchrun: the torch.distributed backend, auto (NCCL for GPUs, gloo for "
                                      "the CPU) | gloo | nccl.")]
RunDir = Annotated[Path, typer.Argument(metavar="RUN", help="A run directory written by 'vaekit train'.", show_default=False)]
Weights = Annotated[str, Opt(help="last (model.safetensors) | best (best.safetensors, the best validation epoch's "
                                  "weights).")]
Threads = Annotated[int, Opt(help="CPU threads for torch (0: auto, every core other processes leave free).")]
Overwrite = Annotated[bool, Opt(help="Replace output files that already exist.")]
Device = Annotated[str, Opt(help="auto | cpu | cuda | cuda:N | mps (auto: a GPU if there is one).")]
Quiet = Annotated[bool, Opt("--quiet", "-q", help="No progress bar or messages.")]

_TYPES = {"int": int, "float": float, "bool": bool}


def default_text(name: str) -> str:
    """A setting's default as ``train --help`` shows it (the flags default to "not given", so
    that a --config file can set them; this is what applies when neither does)."""
    f = next(f for f in fields(Config) if f.name == name)
    value = f.default if f.default is not MISSING else f.default_factory()
    if isinstance(value, bool):
        return name.replace("_", "-") if value else "no-" + name.replace("_", "-")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value == "" else str(value)


def setting_options() -> list[inspect.Parameter]:
    """One typer option per :class:`Config` setting, from its declaration: ``--name-with-dashes``
    (``--name/--no-name`` for a switch), its help, its default; every option defaults to "not
    given" (None), so that a --config file or a preset can set it."""
    options = []
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = _TYPES.get(str(f.type), str)  # lists are given as text: 400,200
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        # the default written into the help: click puts a default given as text in parentheses,
        # "[default: (digits)]"
        shown = f"  [default: {default_text(f.name)}]" if f.default is not None else ""
        option = Opt(*decls, help=help_text(f.name) + shown, show_default=False)
        options.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=Annotated[kind | None, option]))
    return options


def with_settings(command, own, first: tuple[str, ...] = ()) -> Any:
    """``command`` (which takes ``**options``) given the typer signature of ``own``'s parameters
    named in ``first``, every setting's option, then ``own``'s other parameters; ``own``'s
    docstring is the command's help."""
    mine = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(own, eval_str=True).parameters.values()]
    params = ([p for p in mine if p.name in first] + setting_options()
              + [p for p in mine if p.name not in first])
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = own.__doc__
    return command


def positive(name: str, value: int) -> None:
    if value < 1:
        raise VaekitError(f"{name} must be at least 1, got {value}")


def check_threads(threads: int) -> None:
    if threads < 0:
        raise VaekitError(f"--threads must be 0 (auto) or more, got {threads}")
