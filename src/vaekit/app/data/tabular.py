"""CSV and Parquet tables: every column a numeric feature, except an optional label column.

The first CSV line names the columns. A label column may hold integers (used as they are)
or names (numbered in sorted order, the names kept as class names). Non-numeric values,
missing values and empty tables are refused with the row and column at fault.
Needs pandas (and pyarrow for Parquet): ``pip install 'vaekit[tabular]'``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import torch

from vaekit.app.data import Dataset, DataSplits
from vaekit.app.data.lazy import FLOAT32_MAX
from vaekit.errors import VaekitError

SUFFIXES = (".csv", ".tsv", ".parquet")


def load_table(path: Path, label_column: str | None = None, label_required: bool = True) -> DataSplits:
    """The table's numeric columns as ``x`` (their names as ``features``); ``label_column``
    as labels, names numbered in sorted order (``classes``). ``label_required=False``: a
    table without ``label_column`` comes without labels (new data to score)."""
    if not path.is_file():
        raise VaekitError(f"data file not found: {path}")
    frame = _read(path)
    if frame.shape[1] == 0 or len(frame) == 0:
        raise VaekitError(f"{path}: the table is empty ({len(frame)} rows, {frame.shape[1]} columns)")
    labels = classes = None
    if label_column is not None and not label_required and label_column not in frame.columns:
        label_column = None
    if label_column is not None:
        if label_column not in frame.columns:
            names = [str(c) for c in frame.columns]
            hint = difflib.get_close_matches(label_column, names, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise VaekitError(
                f"{path}: no column named '{label_column}'{extra}; the columns are "
                f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
            )
        labels, classes = _labels(frame.pop(label_column), path, label_column)
        if frame.shape[1] == 0:
            raise VaekitError(f"{path}: no feature columns besides the label column '{label_column}'")
    x = np.stack([_column(frame[c], path, str(c), label_column is None) for c in frame.columns], axis=1)  # a copy
    return DataSplits(train=Dataset(torch.from_numpy(_float32(x, path, frame.columns)), labels, path.stem,
                                    classes=classes, features=[str(c) for c in frame.columns]))


def _float32(x: np.ndarray, path: Path, columns) -> np.ndarray:
    """The (finite, float64) features as float32, or an error naming the first value beyond
    float32's range (it would become inf after the finiteness check)."""
    with np.errstate(over="ignore"):  # overflow is found and named below
        out = x.astype(np.float32)
    lost = np.isinf(out)
    if lost.any():
        i, j = np.unravel_index(int(lost.argmax()), lost.shape)
        raise VaekitError(
            f"{path}: {_where(path, int(i))}, column '{columns[j]}': {x[i, j]:g} is beyond float32's range "
            f"(±{FLOAT32_MAX:.3g}), the precision vaekit computes in; rescale the column"
        )
    return out


def _read(path: Path):
    try:
        import pandas as pd
    except ImportError:
        raise VaekitError(
            "reading CSV or Parquet files needs pandas (and pyarrow for Parquet): "
            "pip install 'vaekit[tabular]'"
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise VaekitError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:
        raise VaekitError(f"{path}: not a well-formed table ({str(err).strip()})") from None
    except UnicodeDecodeError:
        raise VaekitError(f"{path}: not a text file (cannot decode it as UTF-8)") from None
    except ImportError as err:
        raise VaekitError(f"{path}: reading Parquet needs pyarrow ({err})") from None
    except (OSError, ValueError) as err:
        raise VaekitError(f"{path}: not a readable {suffix[1:]} file ({str(err).strip()})") from None


def _column(column, path: Path, name: str, no_labels: bool = False) -> np.ndarray:
    """One feature column as float64, or an error naming the first bad row (and, for a text
    column when no label column was named, how to use it as the labels)."""
    import pandas as pd

    if column.dtype == bool:
        return column.to_numpy(np.float64)
    if pd.api.types.is_numeric_dtype(column.dtype):
        values = column.to_numpy(np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() & column.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            hint = ""
            if no_labels and int(bad.sum()) == int(column.notna().sum()):  # text all the way down
                hint = (f"; if column '{name}' holds class labels, name it with --label-column {name} "
                        f"(label_column = \"{name}\" in a config)")
            raise VaekitError(
                f"{path}: {_where(path, i)}, column '{name}': {column.iloc[i]!r} is not a number{hint}"
            )
        values = numbers.to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "a missing value (empty or NaN)" if np.isnan(values[i]) else "an infinite value"
        raise VaekitError(f"{path}: {_where(path, i)}, column '{name}': {what}")
    return values


def _labels(column, path: Path, name: str) -> tuple[torch.Tensor, list[str] | None]:
    import pandas as pd

    missing = column.isna().to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise VaekitError(f"{path}: {_where(path, i)}, label column '{name}': a missing label")
    if pd.api.types.is_integer_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        return torch.from_numpy(column.to_numpy(np.int64, copy=True)), None
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(np.float64)
        fractional = values != np.round(values)
        if fractional.any():
            i = int(np.flatnonzero(fractional)[0])
            raise VaekitError(
                f"{path}: {_where(path, i)}, label column '{name}': {values[i]:g} is not an "
                "integer or a class name"
            )
        return torch.from_numpy(values.astype(np.int64)), None
    names = column.astype(str)
    classes = sorted(names.unique())
    codes = np.searchsorted(np.array(classes), names.to_numpy())
    return torch.from_numpy(codes.astype(np.int64)), classes


def _where(path: Path, i: int) -> str:
    """Row ``i`` (0-based, data rows) as a reader finds it: a CSV line counts the header."""
    if path.suffix.lower() == ".parquet":
        return f"row {i + 1}"
    return f"line {i + 2}"
