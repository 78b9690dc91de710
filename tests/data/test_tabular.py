"""CSV and Parquet tables made by the tests, including broken ones."""

from __future__ import annotations

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
