"""CSV and Parquet tables made by the tests, including broken ones."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from vaekit.app.data import load_data
from vaekit.errors import VaekitError


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_numeric_columns_and_integer_labels(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2.5,0\n-3,4e2,2\n0.5,0,1\n")
    data = load_data(path, label_column="y").train
    torch.testing.assert_close(data.x, torch.tensor([[1, 2.5], [-3, 400], [0.5, 0]]))
    assert data.labels.tolist() == [0, 2, 1] and data.classes is None
    everything = load_data(path).train
    assert everything.x.shape == (3, 3) and everything.labels is None


def test_named_labels_are_numbered_in_sorted_order(tmp_path):
    path = write(tmp_path, "x,kind\n1,dog\n2,cat\n3,dog\n", name="t.csv")
    data = load_data(path, label_column="kind").train
    assert data.classes == ["cat", "dog"] and data.labels.tolist() == [1, 0, 1]


def test_tsv_and_parquet(tmp_path):
    tsv = write(tmp_path, "a\tb\n1\t2\n3\t4\n", name="t.tsv")
    assert load_data(tsv).train.x.tolist() == [[1, 2], [3, 4]]
    frame = pd.DataFrame({"f1": [0.1, 0.2], "f2": [1, 2], "label": ["u", "v"]})
    frame.to_parquet(tmp_path / "t.parquet")
    data = load_data(str(tmp_path / "t.parquet"), label_column="label").train
    torch.testing.assert_close(data.x, torch.tensor([[0.1, 1.0], [0.2, 2.0]]))
    assert data.classes == ["u", "v"]


@pytest.mark.parametrize(
    "text, label, message",
    [
        ("a,b\n1,2\n3,x7\n", None, r"line 3, column 'b': 'x7' is not a number"),
        ("a,b\n1,2\n3,\n", None, r"line 3, column 'b': a missing value \(empty or NaN\)"),
        ("a,b\n1,NaN\n", None, r"line 2, column 'b': a missing value"),
        ("a,b\n1,inf\n", None, r"line 2, column 'b': an infinite value"),
        ("a,b\n1,2\n3,1e39\n", None, r"line 3, column 'b': 1e\+39 is beyond float32's range"),
        ("a,b,y\n1,2,0\n-4e38,1e300,1\n", "y", r"line 3, column 'a': -4e\+38 is beyond float32's range"),
        ("", None, "the file is empty"),
        ("a,b\n", None, r"the table is empty \(0 rows, 2 columns\)"),
        ("a,b\n1,2\n", "lable", r"no column named 'lable'; the columns are a, b"),
        ("a,label\n1,2\n", "lable", r"did you mean 'label'"),
        ("a,y\n1,\n", "y", r"line 2, label column 'y': a missing label"),
        ("a,y\n1,0.5\n", "y", r"line 2, label column 'y': 0.5 is not an integer"),
        ("y\n1\n", "y", "no feature columns besides the label column 'y'"),
        ("a,b\n1,2\n3,4,5\n", None, "not a well-formed table"),
    ],
)
def test_bad_tables_get_one_clear_message(tmp_path, text, label, message):
    path = write(tmp_path, text)
    with pytest.raises(VaekitError, match=message):
        load_data(path, label_column=label)


def test_parquet_rows_are_counted_from_one(tmp_path):
    pd.DataFrame({"a": [1.0, 2.0, np.nan]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(VaekitError, match=r"row 3, column 'a': a missing value"):
        load_data(str(tmp_path / "t.parquet"))
    pd.DataFrame({"a": [1.0, 2.0], "b": [0.0, 1e39]}).to_parquet(tmp_path / "big.parquet")
    with pytest.raises(VaekitError, match=r"big.parquet: row 2, column 'b': 1e\+39 is beyond float32's range"):
        load_data(str(tmp_path / "big.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(VaekitError, match="not a readable parquet file"):
        load_data(str(tmp_path / "bad.parquet"))


def test_binary_file_with_csv_name(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"\xff\xfe\x00\x81\x82")
    with pytest.raises(VaekitError, match="t.csv"):
        load_data(str(tmp_path / "t.csv"))


@pytest.fixture
def no_pandas(monkeypatch):
    """pandas (and pyarrow) unimportable, as after the README's set-up, which installs neither."""
    for name in ("pandas", "pyarrow"):
        monkeypatch.setitem(sys.modules, name, None)


def test_csv_and_tsv_need_no_pandas(tmp_path, no_pandas):
    with pytest.raises(ImportError):
        import pandas  # noqa: F401
    path = write(tmp_path, "\ufeffa,b,kind\n1,2.5,dog\n\n-3,4e2,cat\n0.5,\"7\",dog\n")
    data = load_data(path, label_column="kind").train
    torch.testing.assert_close(data.x, torch.tensor([[1, 2.5], [-3, 400], [0.5, 7]]))
    assert data.features == ["a", "b"] and data.classes == ["cat", "dog"] and data.labels.tolist() == [1, 0, 1]
    tsv = write(tmp_path, "a\ta\tok\n1\t2\tTrue\n3\t4\tfalse\n", name="t.tsv")
    data = load_data(tsv, label_column="ok").train
    assert data.features == ["a", "a.1"] and data.x.tolist() == [[1, 2], [3, 4]] and data.labels.tolist() == [1, 0]
    numbered = load_data(write(tmp_path, "x,y\n1,2\n2,0.0\n", name="n.csv"), label_column="y").train
    assert numbered.labels.tolist() == [2, 0] and numbered.classes is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b\n1,2\n\n3,x7\n", r"line 4, column 'b': 'x7' is not a number"),  # blank lines keep the count
        ("a,b\n1,2\n3\n", r"line 3, column 'b': a missing value"),  # a short row
        ("a,b\n1,NA\n", r"line 2, column 'b': a missing value"),
        ("a,b\n1,2\n3,4,5\n", r"not a well-formed table \(line 3 has 3 fields, the header 2\)"),
        ("a,name\n1,x\n", r"column 'name': 'x' is not a number; if column 'name' holds class labels"),
    ],
)
def test_csv_errors_without_pandas(tmp_path, no_pandas, text, message):
    with pytest.raises(VaekitError, match=message):
        load_data(write(tmp_path, text))


def test_parquet_without_pandas_says_what_to_install(tmp_path, no_pandas):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(VaekitError, match=r"Parquet files needs pandas and pyarrow: pip install 'vaekit\[tabular\]'"):
        load_data(str(tmp_path / "t.parquet"))
