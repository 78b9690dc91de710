"""Partial evaluations: the per-example scores of an evaluation that was interrupted, kept in
a safetensors file next to its result so that the same command goes on where it stopped.

A K = 5000 evaluation of the 10k MNIST test images runs from minutes to hours on a CPU; an
interruption (Ctrl-C, a kill, the end of a session) should cost the batch in progress, not
the whole of it. The file holds the scores of the leading whole batches and, as metadata,
everything they depend on (settings, the weights' and the data's digests, the batch size):
it is resumed only when all of that matches, so a resumed result is the uninterrupted one,
bit for bit (see :func:`vaekit.evaluation.per_example`). A file that does not match, or
cannot be read, is set aside with a one-line note and the evaluation starts over.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vaekit.errors import VaekitError

SUFFIX = ".partial.safetensors"
SAVE_SECONDS = 30.0  # the first save, and the least time between two: a quick evaluation writes nothing


def partial_path(result: Path) -> Path:
    """Where the scores of ``result`` (an evaluation-*.json) wait while it is not finished."""
    return result.with_name(result.name.removesuffix(".json") + SUFFIX)


def fingerprint(model: torch.nn.Module, x: Any, labels: torch.Tensor | None = None) -> dict[str, str]:
    """Digests of the weights (every tensor of the state) and of the data (a tensor's values, a
    lazily read array's ``content_fingerprint``; and the labels a conditional model reads),
    which the scores depend on besides the settings."""
    from vaekit.rundir import tensors_digest

    weights = {name: value.detach().cpu() for name, value in model.state_dict().items()}
    data = {"x": x.detach().cpu()} if torch.is_tensor(x) else {}
    if labels is not None:
        data["labels"] = labels.detach().cpu()
    lazy = {} if "x" in data else {"rows": len(x), "source": getattr(x, "content_fingerprint", lambda: None)()}
    return {"weights_sha256": tensors_digest(weights, {}), "data_sha256": tensors_digest(data, lazy)}


def begin(path: Path, settings: dict[str, Any], model: torch.nn.Module, x: Any,
          labels: torch.Tensor | None = None) -> tuple[PartialScores, dict[str, torch.Tensor] | None]:
    """(the evaluation's kept scores, what to resume from or None): ``settings`` completed with
    vaekit's version and the weights' and data's digests."""
    from vaekit import __version__

    partial = PartialScores(path, {**settings, "vaekit": __version__, **fingerprint(model, x, labels)}, len(x))
    return partial, partial.load()


class PartialScores:
    """The scores of one evaluation as it goes: :meth:`load` what an interrupted run left,
    :meth:`on_batch` keeps them (at most every ``SAVE_SECONDS``), :meth:`interrupted` saves
    what is finished; the caller removes the file once the result is written."""

    def __init__(self, path: Path, settings: dict[str, Any], total: int):
        self.path, self.settings, self.total = path, settings, total
        self.rows, self.saved, self.scores = 0, 0, None
        self.resumed = 0  # rows taken from the file by :meth:`load`
        self.last = time.monotonic()
        self.note: str | None = None

    def load(self) -> dict[str, torch.Tensor] | None:
        """The scores to resume from, or None (``note`` says why a file there was not used)."""
        from vaekit.rundir import read_header, read_tensors

        if not self.path.is_file():
            return None
        try:  # the header first: someone else's run may hold a file of any size
            shapes, _ = read_header(self.path, "a partial evaluation")
            if len(shapes) > 64 or any(len(s) != 1 or s[0] > self.total for s in shapes.values()):
                raise VaekitError(f"{self.path} holds tensors shaped {sorted(set(shapes.values()))[:3]}, "
                                  f"not scores of at most {self.total} examples")
            tensors, meta = read_tensors(self.path, "a partial evaluation")
        except VaekitError as err:
            self.note = f"starting over: {err}"
            return None
        rows = meta.get("rows")
        if {k: meta.get(k) for k in self.settings} != self.settings:
            changed = sorted(k for k in self.settings if meta.get(k) != self.settings[k])
            self.note = (f"starting over: {self.path.name} was scored with other "
                         f"{', '.join(changed)} than this evaluation")
            return None
        shapes = {tuple(t.shape) for t in tensors.values()}
        if (not isinstance(rows, int) or not 0 < rows <= self.total or shapes != {(rows,)}
                or any(t.dtype != torch.float64 for t in tensors.values())):
            self.note = f"starting over: {self.path.name} does not hold whole scores of {rows} rows"
            return None
        self.rows = self.saved = self.resumed = rows
        self.note = f"resuming the evaluation after {rows} of {self.total} examples (scores kept in {self.path})"
        return tensors

    def on_batch(self, rows: int, scores: Mapping[str, torch.Tensor]) -> None:
        self.rows, self.scores = rows, scores
        if time.monotonic() - self.last >= SAVE_SECONDS:
            self.save_now()

    def save_now(self) -> bool:
        """Write the leading rows scored so far (if more than the file holds); whether any are kept."""
        from vaekit.rundir import atomic_write, encode_tensors

        if self.scores is not None and self.rows > self.saved and self.rows < self.total:
            prefix = {key: value[: self.rows] for key, value in self.scores.items()}
            try:
                atomic_write(self.path, encode_tensors(prefix, {**self.settings, "rows": self.rows}))
                self.saved = self.rows
            except VaekitError:  # a run we cannot write to: the evaluation goes on, unresumable
                pass
        self.last = time.monotonic()
        return self.saved > 0

    def interrupted(self) -> str:
        """What an interruption leaves, in one sentence."""
        if self.save_now():
            return (f"the scores of {self.saved} of {self.total} examples are kept in {self.path}: "
                    "the same command goes on from there")
        return "no batch was finished, so nothing is kept"
