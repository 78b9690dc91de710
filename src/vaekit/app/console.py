"""What the app prints: progress lines where stderr is not a terminal, the end-of-training
summary, progress bars of the commands, and the formatting of numbers, durations and sizes.
Messages go to stderr; results (the summary, tables) to stdout."""

from __future__ import annotations

import sys
import time

from vaekit.training import Callback


def say(message: str) -> None:
    """A message (not a result): on stderr."""
    print(message, file=sys.stderr)


class ProgressLines(Callback):
    """Progress where stderr is not a terminal (CI logs, nohup, a notebook's subprocess), where
    a progress bar shows nothing: one line per epoch, at most one every ``every`` seconds
    (the first and the last epoch always), and a line within an epoch that runs longer than
    ``step_every`` seconds without one."""

    def __init__(self, every: float = 5.0, step_every: float = 60.0):
        self.every, self.step_every = every, step_every

    def on_fit_start(self, loop) -> None:
        self.started = self.last = time.monotonic()
        self.first = len(loop.history.epochs) + 1
        self.first_step = loop.steps_done

    def on_step_end(self, loop, loss: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.step_every:
            say(f"epoch {_of(loop.epoch, loop.epochs)}  step {loop.step}/{loop.steps_per_epoch}  loss {loss:.4g}")
            self.last = now

    def on_epoch_end(self, loop, record: dict) -> None:
        now = time.monotonic()
        epoch = record["epoch"]
        if epoch not in (self.first, loop.epochs) and now - self.last < self.every and not loop.stop_requested:
            return
        self.last = now
        parts = [f"epoch {_of(epoch, loop.epochs)}", f"train ELBO {_nats(record.get('train_elbo'))}"]
        if record.get("validation_elbo") is not None:
            parts.append(f"validation ELBO {_nats(record['validation_elbo'])}")
        done = epoch - self.first + 1
        per_epoch = (now - self.started) / done
        parts.append(f"{_duration(per_epoch)}/epoch")
        left = []  # each budget's remaining time; the run ends at the first
        if loop.epochs is not None and epoch < loop.epochs:
            left.append(per_epoch * (loop.epochs - epoch))
        if loop.budget is not None:  # a time budget ends on its clock, whatever pace the plan assumed
            left.append(max(0.0, loop.budget.seconds - loop.seconds))
        elif loop.total_steps and loop.steps_done > self.first_step:  # a step budget
            per_step = (now - self.started) / (loop.steps_done - self.first_step)
            left.append(per_step * max(0, loop.total_steps - loop.steps_done))
        if left:
            parts.append(f"about {_duration(min(left))} left")
        say("  ".join(parts))


class Summary(Callback):
    """A few lines at the end of training (stdout): the final train and validation ELBO, the
    best validation epoch, the final evaluation's log-likelihood and active units, and the
    wall time. ``bound = False`` (a Bernoulli likelihood on grey levels): the importance-sampled
    figure is no log-likelihood and is not called one."""

    def __init__(self, bound: bool = True):
        self.bound = bound

    def on_fit_start(self, loop) -> None:
        self.started = time.monotonic()

    def on_results(self, loop, evaluation: dict | None) -> None:
        epochs = loop.history.epochs
        if not epochs:
            return
        last = epochs[-1]
        line = (f"trained {last['epoch']} epochs (this session {_duration(time.monotonic() - self.started)}): "
                f"train ELBO {_nats(last.get('train_elbo'))}")
        if last.get("validation_elbo") is not None:
            line += f", validation ELBO {_nats(last['validation_elbo'])}"
        best = loop.history.best
        if best is not None and best["epoch"] != last["epoch"]:
            line += f" (best {_nats(best['value'])} at epoch {best['epoch']})"
        print(line)
        if evaluation and evaluation.get("log_likelihood") is not None:
            se = evaluation.get("log_likelihood_se")
            units = evaluation.get("active_units_per_dim") or []
            what = ("log-likelihood" if self.bound else
                    "importance-sampled estimate (not a log-likelihood: the bernoulli likelihood of non-binary data)")
            print(f"{evaluation.get('split', 'data')}: {what} {_nats(evaluation['log_likelihood'])}"
                  + ("" if se is None else f" ± {se:.2g}")
                  + f" nats (K = {evaluation.get('importance_samples')}), "
                  f"active units {evaluation.get('active_units')} of {len(units)}")
        elif evaluation and evaluation.get("reconstruction") is not None:
            print(f"{evaluation.get('split', 'data')}: reconstruction log-likelihood "
                  f"{_nats(evaluation['reconstruction'])} nats")


def _of(count: int, total: int | None) -> str:
    return str(count) if total is None else f"{count}/{total}"


def _nats(value) -> str:
    return "nan" if value is None or value != value else f"{value:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def progress(quiet: bool, description: str, total: float):
    """A context manager giving ``advance(n)``: a rich progress bar on stderr, or nothing."""
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if quiet:
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True),
                      transient=not sys.stderr.isatty()) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.update(task, advance=n)

    return bar()


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
