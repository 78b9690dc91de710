"""The command line: the commands wired into one typer app (their bodies live in
:mod:`vaekit.app.commands`), and the one place where an error becomes a line and an exit status.

Nothing heavy is imported at module level, so ``vaekit --help`` starts without torch.
Every user error ends as one line on stderr (``error: ...``) and exit status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vaekit.app.commands import browse, data, encode, evaluate, plot, presets, reconstruct, sample, train
from vaekit.app.commands.options import Command
from vaekit.errors import Interrupted, VaekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Variational Autoencoders on PyTorch: train, evaluate, sample, reconstruct, encode, plot.",
)


def _version(show: bool) -> None:
    if show:
        from vaekit import __version__

        print(f"vaekit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Variational Autoencoders on PyTorch: train, evaluate, sample, reconstruct, encode, plot."""


app.command("train", cls=Command)(train.command)
app.command("evaluate", cls=Command)(evaluate.command)
app.command("sample", cls=Command)(sample.command)
app.command("reconstruct", cls=Command)(reconstruct.command)
app.command("encode", cls=Command)(encode.command)
app.command("plot", cls=Command)(plot.command)
app.command("presets", cls=Command)(presets.command)
app.add_typer(data.app, name="data")
app.command("report", cls=Command)(browse.report)
app.command("runs", cls=Command)(browse.runs_command)
app.command("explore", cls=Command)(browse.explore)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 success, 2 user error, 130 interrupted)."""
    try:
        app(args=argv, prog_name="vaekit")
    except SystemExit as done:  # typer's normal way out, including usage errors
        interruption = _interruption(done)
        if interruption is not None:  # typer turns Ctrl-C (and torchrun's SIGTERM) into exit 130
            from vaekit.app.launch import settle

            settle()
            return _report(interruption)
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException as err:
        from vaekit.app.launch import settle

        settle()
        return _report(err)
    return 0


def _interruption(done: SystemExit) -> KeyboardInterrupt | None:
    """The interruption behind typer's exit, if that is what it was."""
    err: BaseException | None = done
    for _ in range(4):
        err = err.__cause__ or err.__context__
        if err is None or isinstance(err, KeyboardInterrupt):
            return err
    return None


def _report(err: BaseException) -> int:
    """Print what ended the command (one line); return the exit status."""
    if isinstance(err, KeyboardInterrupt) and isinstance(err.__context__, VaekitError):
        err = err.__context__  # a termination request cut short the report of an error: report it
    if isinstance(err, Interrupted):
        _say(str(err), err)
        return err.exit_code
    if isinstance(err, VaekitError):
        _say(f"error: {err}", err)
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        _say(str(err) or "interrupted")
        return getattr(err, "exit_code", 130)
    if isinstance(err, OSError):  # the machine's problem, not a bug: one line, no traceback
        where = f"{err.filename}: " if err.filename else ""
        _say(f"error: {where}{err.strerror or err}")
        return 2
    from vaekit.distributed import lost_peer, reason

    if isinstance(err, RuntimeError) and lost_peer(err):
        _say(f"error: another process of this torchrun job is gone ({reason(err)})")
        return 2
    raise err


def _say(message: str, err: BaseException | None = None) -> None:
    """Print on stderr: rank 0 everything, another rank only what is its own (an error every
    rank raised alike, or an interruption, is rank 0's to report)."""
    from vaekit.app.launch import rank

    here = rank()
    if here == 0:
        print(message, file=sys.stderr)
    elif not (getattr(err, "shared", False) or isinstance(err, Interrupted)):
        print(f"[rank {here}] {message}", file=sys.stderr)


def entry() -> None:
    sys.exit(main())
