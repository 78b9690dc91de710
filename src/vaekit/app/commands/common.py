"""What the commands that read a run share: the model with its data, the thread policy,
the map back to the data's units."""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import VaekitError


def model_and_data(run_dir: Path, data: str | None, split: str | None, overrides: dict | None = None,
                    device: str = "cpu", weights: str = "last"):
    """(model, config, dataset, split, the weights' epoch) for a command that reads data."""
    from vaekit.app.data import same_data, select_default_split, select_split
    from vaekit.app.runs import load_run_epoch

    model, config, epoch = load_run_epoch(run_dir, weights, device=device)
    if overrides and any(v is not None for v in overrides.values()):
        config = config.override(overrides, source="command line")
    own = same_data(data, config)
    if split is None and own:
        split, dataset = select_default_split(config, run_dir)  # the data are read once
    else:
        split = split or "all"
        dataset = select_split(config, split, data, run_dir=run_dir)
    if dataset.event_shape != model.event_shape:
        raise VaekitError(
            f"data shaped {list(dataset.event_shape)} per example, but the model in {run_dir} "
            f"was trained on {list(model.event_shape)}"
        )
    return model, config, dataset, split, epoch


def thread_policy(threads: int):
    """The CPU thread policy for one command's work (restored afterwards)."""
    from vaekit.app.threads import ThreadPolicy

    return ThreadPolicy(threads, quiet=True)


def training_rows(config, run_dir: Path, limit: int = 2000):
    """The first rows of the run's training split, as the model saw them (for comparisons)."""
    from vaekit.app.data import run_splits

    train = run_splits(config, quiet=True, run_dir=run_dir)["train"]
    return train.x[:limit]


def data_units(run_dir: Path):
    """The map from the model's values to the data's units (undoing a standardisation), or None."""
    from vaekit.app.data import recorded_standardization

    st = recorded_standardization(run_dir)
    return None if st is None else st.invert


def original_units(x, run_dir: Path):
    """Model-space values back in the data's units where the run standardised its data."""
    from vaekit.app.data import recorded_standardization

    st = recorded_standardization(run_dir)
    return x if st is None else st.invert(x)


def labels_of(model, dataset):
    from vaekit.app.runs import labels_for

    return labels_for(model, dataset)
