"""Built-in datasets that need no download."""

from __future__ import annotations

import torch

from vaekit.app.data import Dataset, DataSplits


def digits(data_dir: str | None = None) -> DataSplits:
    """scikit-learn's 1,797 8x8 handwritten digits, grey levels 0..16 scaled to [0, 1].

    There is no official test split: runs hold out a validation fraction instead.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return DataSplits(train=Dataset(x, labels, "digits"), test=None)


DATASETS = {"digits": digits}
