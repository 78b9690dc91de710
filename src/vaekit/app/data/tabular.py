"""CSV and Parquet tables: every column a numeric feature, except an optional label column.

The first CSV line names the columns. A label column may hold integers (used as they are)
or names (numbered in sorted order, the names kept as class names). Non-numeric values,
missing values and empty tables are refused with the row and column at fault.
CSV/TSV are read with the standard library's ``csv`` module and numpy (nothing to install);
Parquet needs pandas and pyarrow: ``pip install 'vaekit[tabular]'``.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaekit.app.data import Dataset, DataSplits
from vaekit.app.data.lazy import FLOAT32_MAX
from vaekit.errors import VaekitError

SUFFIXES = (".csv", ".tsv", ".parquet")
# pandas' default missing-value markers (case-folded), so a table reads as it did with pandas
_MISSING = frozenset(s.casefold() for s in (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"))
_BOOLEANS = {"true": 1.0, "false": 0.0}


@dataclass
class _Column:
    """One column as read: ``numbers`` (float64, NaN where missing) when every present value
    is a number (or a boolean), else ``text`` (``None`` where missing)."""

    numbers: np.ndarray | None = None
    text: list[str | None] | None = None

    @property
    def missing(self) -> np.ndarray:
        if self.numbers is not None:
            return np.isnan(self.numbers)
        return np.array([v is None for v in self.text], dtype=bool)


def load_table(path: Path, label_column: str | None = None, label_required: bool = True) -> DataSplits:
    """The table's numeric columns as ``x`` (their names as ``features``); ``label_column``
    as labels, names numbered in sorted order (``classes``). ``label_required=False``: a
    table without ``label_column`` comes without labels (new data to score)."""
    if not path.is_file():
        raise VaekitError(f"data file not found: {path}")
    columns, rows, lines = _read(path)
    if not columns or rows == 0:
        raise VaekitError(f"{path}: the table is empty ({rows} rows, {len(columns)} columns)")
    where = (lambda i: f"row {i + 1}") if lines is None else (lambda i: f"line {lines[i]}")
    labels = classes = None
    if label_column is not None and not label_required and label_column not in columns:
        label_column = None
    if label_column is not None:
        if label_column not in columns:
            names = list(columns)
            hint = difflib.get_close_matches(label_column, names, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise VaekitError(
                f"{path}: no column named '{label_column}'{extra}; the columns are "
                f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
            )
        labels, classes = _labels(columns.pop(label_column), path, label_column, where)
        if not columns:
            raise VaekitError(f"{path}: no feature columns besides the label column '{label_column}'")
    names = list(columns)
    x = np.stack([_feature(columns[c], path, c, label_column is None, where) for c in names], axis=1)
    return DataSplits(train=Dataset(torch.from_numpy(_float32(x, path, names, where)), labels, path.stem,
                                    classes=classes, features=names))


def _float32(x: np.ndarray, path: Path, columns, where) -> np.ndarray:
    """The (finite, float64) features as float32, or an error naming the first value beyond
    float32's range (it would become inf after the finiteness check)."""
    with np.errstate(over="ignore"):  # overflow is found and named below
        out = x.astype(np.float32)
    lost = np.isinf(out)
    if lost.any():
        i, j = np.unravel_index(int(lost.argmax()), lost.shape)
        raise VaekitError(
            f"{path}: {where(int(i))}, column '{columns[j]}': {x[i, j]:g} is beyond float32's range "
            f"(±{FLOAT32_MAX:.3g}), the precision vaekit computes in; rescale the column"
        )
    return out


def _read(path: Path) -> tuple[dict[str, _Column], int, list[int] | None]:
    """(columns by name in file order, the number of rows, each row's line number in the
    file or None for Parquet, whose rows are counted from 1)."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    return _read_text(path)


def _read_text(path: Path) -> tuple[dict[str, _Column], int, list[int]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise VaekitError(f"{path}: the file is empty")
            names = _column_names(header)
            cells: list[list[str]] = [[] for _ in names]
            lines = []
            for row in reader:
                if not row:
                    continue  # blank lines, as pandas skips them
                if len(row) > len(names):
                    raise VaekitError(
                        f"{path}: not a well-formed table (line {reader.line_num} has {len(row)} fields, "
                        f"the header {len(names)})"
                    )
                row = row + [""] * (len(names) - len(row))  # short rows: missing values
                for column, value in zip(cells, row, strict=True):
                    column.append(value)
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise VaekitError(f"{path}: not a text file (cannot decode it as UTF-8)") from None
    except csv.Error as err:
        raise VaekitError(f"{path}: not a well-formed table ({str(err).strip()})") from None
    except OSError as err:
        raise VaekitError(f"{path}: not a readable {path.suffix[1:]} file ({err.strerror or err})") from None
    return {name: _parse(values) for name, values in zip(names, cells, strict=True)}, len(lines), lines


def _column_names(header: list[str]) -> list[str]:
    """The header's names, made unique and non-empty as pandas makes them ("a", "a.1",
    "Unnamed: 2")."""
    names: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, k = name, 0
        while name in names:
            k += 1
            name = f"{base}.{k}"
        names.append(name)
    return names


def _parse(values: list[str]) -> _Column:
    """A CSV column: numbers where every present value is one (or every one a boolean)."""
    try:  # the fast path: every value a number numpy reads
        return _Column(numbers=np.asarray(values, dtype=str).astype(np.float64))
    except ValueError:
        pass
    text = [None if v.strip().casefold() in _MISSING else v for v in values]
    present = [v for v in text if v is not None]
    if present and all(v.strip().casefold() in _BOOLEANS for v in present):
        return _Column(numbers=np.array([np.nan if v is None else _BOOLEANS[v.strip().casefold()] for v in text]))
    numbers, bad = _to_numbers(text)
    return _Column(text=text) if bad.any() else _Column(numbers=numbers)


def _to_numbers(text: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, NaN where missing or not a number; a mask of the non-numbers)."""
    numbers = np.full(len(text), np.nan)
    bad = np.zeros(len(text), dtype=bool)
    for i, v in enumerate(text):
        if v is None:
            continue
        try:
            numbers[i] = float(v)
        except ValueError:
            bad[i] = True
    return numbers, bad


def _read_parquet(path: Path) -> tuple[dict[str, _Column], int, None]:
    try:
        import pandas as pd
    except ImportError:
        raise VaekitError(
            "reading Parquet files needs pandas and pyarrow: pip install 'vaekit[tabular]' "
            "(CSV/TSV tables need neither)"
        ) from None
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise VaekitError(f"{path}: reading Parquet needs pyarrow ({err})") from None
    except (OSError, ValueError) as err:
        raise VaekitError(f"{path}: not a readable parquet file ({str(err).strip()})") from None
    columns = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column.dtype):  # booleans too
            columns[str(name)] = _Column(numbers=column.to_numpy(np.float64, na_value=np.nan))
        else:
            columns[str(name)] = _Column(text=[None if pd.isna(v) else str(v) for v in column.tolist()])
    return columns, len(frame), None


def _feature(column: _Column, path: Path, name: str, no_labels: bool, where) -> np.ndarray:
    """One feature column as float64, or an error naming the first bad row (and, for a text
    column when no label column was named, how to use it as the labels)."""
    if column.numbers is not None:
        values = column.numbers
    else:
        values, bad = _to_numbers(column.text)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            hint = ""
            if no_labels and int(bad.sum()) == int((~column.missing).sum()):  # text all the way down
                hint = (f"; if column '{name}' holds class labels, name it with --label-column {name} "
                        f"(label_column = \"{name}\" in a config)")
            raise VaekitError(f"{path}: {where(i)}, column '{name}': {column.text[i]!r} is not a number{hint}")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "a missing value (empty or NaN)" if np.isnan(values[i]) else "an infinite value"
        raise VaekitError(f"{path}: {where(i)}, column '{name}': {what}")
    return values


def _labels(column: _Column, path: Path, name: str, where) -> tuple[torch.Tensor, list[str] | None]:
    missing = column.missing
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise VaekitError(f"{path}: {where(i)}, label column '{name}': a missing label")
    if column.numbers is not None:
        values = column.numbers
        fractional = values != np.round(values)
        if fractional.any():
            i = int(np.flatnonzero(fractional)[0])
            raise VaekitError(
                f"{path}: {where(i)}, label column '{name}': {values[i]:g} is not an integer or a class name"
            )
        return torch.from_numpy(values.astype(np.int64)), None
    classes = sorted(set(column.text))
    codes = np.searchsorted(np.array(classes), np.array(column.text))
    return torch.from_numpy(codes.astype(np.int64)), classes
