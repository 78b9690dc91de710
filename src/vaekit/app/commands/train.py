"""``vaekit train``: a new run from defaults < a preset < a --config file < flags, or
``--resume`` of one. The setting flags are generated from :class:`~vaekit.app.config.Config`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from vaekit.app.commands.options import DistBackend, Opt, Quiet, with_settings
from vaekit.app.config import Config
from vaekit.errors import VaekitError


def _options(
    out: Annotated[str | None, Opt("--out", "-o", metavar="PATH", help="Run directory to write (default "
                                   "runs/<data>-<model>-<time>).")] = None,
    config: Annotated[Path | None, Opt(help="TOML (or JSON) file of settings; flags override it.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a run already in --out.")] = False,
    figures: Annotated[bool, Opt(help="Draw the figures at the end.")] = True,
    quiet: Quiet = False,
    resume: Annotated[str | None, Opt(metavar="PATH", help="Continue the run in this directory from its checkpoint "
                                      "(only budget settings such as --epochs may change).")] = None,
    dist_backend: DistBackend = "auto",
) -> None:
    """Train a VAE (or AE) and write a run directory with weights, metrics and figures.
    Under torchrun, data parallel: the batch size is the global minibatch, split across the
    processes; rank 0 alone writes the run directory (docs/distributed.md)."""


def _command(**options: Any) -> None:
    from vaekit.app.launch import process_group

    settings = {name: options.pop(name) for name in Config.__dataclass_fields__}
    out, resume = options["out"], options["resume"]
    # the run directories are strings, not typer Paths: typer stats a Path while parsing, and
    # under torchrun only rank 0 may touch the run directory
    with process_group(options["dist_backend"]):
        train(settings, None if out is None else Path(out), options["config"], options["overwrite"],
              options["figures"], options["quiet"], None if resume is None else Path(resume))


command = with_settings(_command, _options, first=("out", "config"))


def train(flags: dict[str, Any], out: Path | None, config: Path | None, overwrite: bool, figures: bool,
          quiet: bool, resume: Path | None) -> None:
    """Train (or resume) with ``flags`` (settings given on the command line, None: not given)."""
    from vaekit.app.config import read_config_file
    from vaekit.app.launch import rank
    from vaekit.app.runs import train as run_training
    from vaekit.app.threads import tune_allocator

    quiet = quiet or rank() != 0
    preset = flags.get("preset")
    tune_allocator()  # a CLI process keeps freed memory for reuse (vaekit.app.threads)
    if resume is not None:
        from vaekit.app.runs import resume as resume_training

        if preset is not None:
            raise VaekitError("--preset starts a new run; --resume continues one with its own settings: choose one")
        if out is not None and out.resolve() != resume.resolve():
            raise VaekitError("--resume continues a run where it is: drop --out (or make it the same)")
        if overwrite:
            raise VaekitError("--resume and --overwrite contradict each other: choose one")
        changes: dict = {}
        if config:
            from vaekit.app.config import flatten

            values = read_config_file(config)
            Config.from_dict(values, source=str(config))  # checks the file on its own first
            changes.update(flatten(values, str(config)))
        changes.update({k: v for k, v in flags.items() if v is not None})
        resume_training(resume, changes, quiet=quiet, figures=figures)
        return
    base = Config()
    if preset is not None:
        from vaekit.app import presets

        base = presets.load(preset).config()
    if config:
        base = base.override(read_config_file(config), source=str(config))
    resolved = base.override(flags)
    if out is None:
        import time

        name = preset or f"{Path(resolved.data).stem or 'data'}-{resolved.model}"
        out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_training(resolved, out, overwrite=overwrite, quiet=quiet, figures=figures)
