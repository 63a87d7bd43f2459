"""The ``csv`` data set: tables the tests write, read back exactly, split, encoded, refused."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mtlc.data import DataError, load_dataset
from mtlc.data.csv_table import load

TABLE = """\
a,b,color,y,label
1,2.5,red,0.5,cat
3,-4.25,blue,1.5,dog
5,6,red,2,cat
7,8e-1,green,3,dog
9,10,blue,-4,cat
"""


def write(folder: Path, text: str, name: str = "t.csv") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def full(path: Path, **options) -> dict:
    """Both splits with ``val_fraction`` 0 is refused, so read the table through val_path."""
    return load("train", path=str(path), val_path=str(path), **options)


def test_values_read_back_exactly_in_file_order(tmp_path):
    path = write(tmp_path, TABLE)
    d = full(path, targets={"r": "y"}, inputs=["a", "b"])
    assert d.keys() == ["x", "r"]
    expected_x = [[1, 2.5], [3, -4.25], [5, 6], [7, 0.8], [9, 10]]
    assert torch.equal(d["x"], torch.tensor(expected_x, dtype=torch.float32))
    assert d["r"].dtype == torch.float32 and d["r"].shape == (5, 1)
    assert d["r"].flatten().tolist() == [0.5, 1.5, 2.0, 3.0, -4.0]
    assert d.info["inputs"] == {"x": [2]} and d.info["features"] == ["a", "b"]
    assert d.info["num_classes"] == {}


def test_one_hot_layout_and_class_ids_by_hand(tmp_path):
    path = write(tmp_path, TABLE)
    d = full(path, targets={"kind": "label"}, inputs=["color", "a"], categorical=["color", "label"])
    # color's categories sorted as text: blue, green, red; then the numeric column a
    assert d.info["features"] == ["color=blue", "color=green", "color=red", "a"]
    expected = [
        [0, 0, 1, 1],  # red, 1
        [1, 0, 0, 3],  # blue, 3
        [0, 0, 1, 5],
        [0, 1, 0, 7],  # green
        [1, 0, 0, 9],
    ]
    assert torch.equal(d["x"], torch.tensor(expected, dtype=torch.float32))
    assert d["kind"].dtype == torch.int64 and d["kind"].tolist() == [0, 1, 0, 1, 0]
    assert d.info["num_classes"] == {"kind": 2} and d.info["classes"] == {"kind": ["cat", "dog"]}


def test_numeric_categories_sort_as_numbers(tmp_path):
    path = write(tmp_path, "x1,k\n0,10\n1,2\n2,9\n3,2\n")
    d = full(path, targets={"k": "k"}, categorical=["k"])
    assert d.info["classes"]["k"] == ["2", "9", "10"]
    assert d["k"].tolist() == [2, 0, 1, 0]


def test_default_inputs_are_every_column_but_the_targets(tmp_path):
    path = write(tmp_path, TABLE)
    d = full(path, targets={"r": "y", "c": "label"}, categorical=["color", "label"])
    assert d.info["features"] == ["a", "b", "color=blue", "color=green", "color=red"]
    assert d.info["inputs"] == {"x": [5]}


def test_split_is_deterministic_by_seed_and_partitions_the_rows(tmp_path):
    rows = "\n".join(f"{i},{i * 10}" for i in range(50))
    path = write(tmp_path, "i,y\n" + rows + "\n")
    opts = {"path": str(path), "targets": {"y": "y"}, "val_fraction": 0.2}
    tr, va = load("train", **opts), load("val", **opts)
    assert len(tr) == 40 and len(va) == 10
    ids_tr, ids_va = tr["x"].flatten().tolist(), va["x"].flatten().tolist()
    assert sorted(ids_tr + ids_va) == list(range(50))
    assert ids_tr == sorted(ids_tr)  # training rows keep the file order
    assert va["y"].flatten().tolist() == [10 * i for i in ids_va]  # rows stay whole
    assert load("val", **opts)["x"].flatten().tolist() == ids_va
    other = load("val", seed=1, **opts)["x"].flatten().tolist()
    assert sorted(other) != sorted(ids_va)
    # the seed under train.data, through the dispatcher
    via = load_dataset({"name": "csv", "seed": 1, **opts}, "val")
    assert via["x"].flatten().tolist() == other
    # default share 0.2
    assert len(load("val", path=str(path), targets={"y": "y"})) == 10


def test_val_path_reads_a_second_file_with_shared_categories(tmp_path):
    train = write(tmp_path, "c,y\nred,1\nred,2\n", "train.csv")
    val = write(tmp_path, "c,y\nblue,3\n", "val.csv")
    opts = {"path": str(train), "val_path": str(val), "targets": {"y": "y"}, "categorical": ["c"]}
    tr, va = load("train", **opts), load("val", **opts)
    assert tr.info["features"] == va.info["features"] == ["c=blue", "c=red"]
    assert tr["x"].tolist() == [[0, 1], [0, 1]] and va["x"].tolist() == [[1, 0]]


def test_relative_paths_start_at_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, TABLE)
    monkeypatch.chdir(tmp_path)
    assert len(load("train", path="t.csv", targets={"r": "y"}, inputs=["a"])) == 4


def test_blank_lines_and_spaces_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffa , y\n\n 1 , 2\n\n3,4\n".encode())
    d = full(path, targets={"y": "y"})
    assert d["x"].flatten().tolist() == [1, 3] and d["y"].flatten().tolist() == [2, 4]


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("", {}, "the file is empty"),
        ("a,y\n", {}, "has a header but no data rows"),
        ("a,y\n1,2\n3\n", {}, "line 3: 1 cells, but the header (line 1) names 2 columns"),
        ("a,y\n1,2\n3,4,5\n", {}, "line 3: 3 cells"),
        ("a,a,y\n1,2,3\n", {}, "the header names column 'a' twice"),
        ("a,,y\n1,2,3\n", {}, "column 2 of the header has no name"),
        ("a,y\n1,2\nabc,4\n", {}, "line 3, column 'a': 'abc' is not a number"),
        ("a,y\n1,2\n3,\n", {}, "line 3, column 'y': the cell is empty; a number is needed"),
        ("a,y\n1,2\nnan,4\n", {}, "line 3, column 'a': 'nan' is not a finite number"),
        (
            "a,price\n1,2\n",
            {"targets": {"y": "prise"}},
            ("train.data.targets.y: ", "no column 'prise' (did you mean 'price'?)"),
        ),
        (
            "a,y\n1,2\n",
            {"inputs": ["A"]},
            ("train.data.inputs: ", "no column 'A' (did you mean 'a'?)", "its columns are a, y"),
        ),
        ("a,y\n1,2\n", {"inputs": ["a", "y"]}, "column 'y' is the target of task 'y'"),
        ("a,y\n1,2\n", {"categorical": ["colr"]}, "train.data.categorical: "),
        (
            "a,b,y\n1,2,3\n",
            {"inputs": ["a"], "categorical": ["b"]},
            "neither an input nor a target",
        ),
        ("a,y\n1,2\n", {"encoding": "embedded"}, "needs a learned embedding layer"),
        ("a,y\n1,2\n", {"val_fraction": 1.5}, "train.data.val_fraction: expected a value between"),
        ("a,y\n1,2\n3,4\n", {"val_fraction": 0.9}, "leaves 0 for training and 2 for validation"),
        ("a,y\n1,2\n3,4\n", {"val_fraction": 0.2}, "leaves 2 for training and 0 for validation"),
        ("a,y\n1,2\n", {"targets": {"x": "y"}}, "a task cannot be named 'x'"),
        ("a,y\n1,2\n", {"targets": ["y"]}, "train.data.targets: expected"),
        ("a,y\n1,2\n", {"targets": {"y": "y"}, "path_": 1}, "unknown option"),
        ('a,y\n"1,2\n', {}, "not a valid csv file"),
    ],
)
def test_bad_tables_and_options_are_one_line_errors(tmp_path, text, options, expected):
    parts = [expected] if isinstance(expected, str) else expected
    path = write(tmp_path, text)
    opts = {"path": str(path), "targets": {"y": "y"}, "val_fraction": 0.5, **options}
    with pytest.raises(DataError) as info:
        load("train", **opts)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_missing_files_folders_fifos_and_mismatched_headers(tmp_path):
    with pytest.raises(DataError, match=r"train.data.path: '.*nope.csv': no such file"):
        load("train", path=str(tmp_path / "nope.csv"), targets={"y": "y"})
    with pytest.raises(DataError, match="not a regular file"):
        load("train", path=str(tmp_path), targets={"y": "y"})
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(DataError, match="fifo.csv': not a regular file"):
        load("train", path=str(fifo), targets={"y": "y"})
    a = write(tmp_path, "a,y\n1,2\n", "a.csv")
    b = write(tmp_path, "a,z\n1,2\n", "b.csv")
    with pytest.raises(DataError, match=r"train.data.val_path: .*differs"):
        load("val", path=str(a), val_path=str(b), targets={"y": "y"})
    with pytest.raises(DataError, match="either val_fraction .* or val_path"):
        load("val", path=str(a), val_path=str(a), val_fraction=0.3, targets={"y": "y"})
    with pytest.raises(DataError, match="train.data.path: data set 'csv' needs this option"):
        load("train", targets={"y": "y"})
    latin = tmp_path / "latin.csv"
    latin.write_bytes("a,y\n\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load("train", path=str(latin), targets={"y": "y"})


# -- through the CLI -------------------------------------------------------------------

SPEC = """\
mtlc: 1
name: table
input: {{x: [{d}]}}
encoder:
  stages:
    s1: [linear(16), relu]
tasks:
  price: {{head: [linear(1)], loss: mse, metrics: [rmse]}}
  kind:  {{head: [linear(3)], loss: cross_entropy, metrics: [accuracy]}}
train:
  data: {{name: csv, path: {path}, targets: {{price: price, kind: kind}}, categorical: [color, kind], val_fraction: 0.25}}
  epochs: 2
  batch_size: 8
"""


def _table(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = ["size,weight,color,price,kind"]
    colors = ["red", "green", "blue"]
    for i in range(40):
        size, weight = torch.rand(2, generator=g).tolist()
        lines.append(
            f"{size:.4f},{weight:.4f},{colors[i % 3]},{2 * size + weight:.4f},{['a', 'b', 'c'][i % 3]}"
        )
    return write(tmp_path, "\n".join(lines) + "\n", "table.csv")


def _cli(*args) -> tuple[int, list[str]]:
    from mtlc.train import command

    result = CliRunner().invoke(command.train, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.strip().splitlines()


def test_a_compiled_spec_trains_on_a_written_table_through_the_cli(tmp_path):
    table = _table(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(d=5, path=table))
    code, lines = _cli(spec, "--out", tmp_path / "run", "--device", "cpu")
    assert code == 0, lines
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 * 4  # 30 training rows at 8 a batch, two epochs
    assert (tmp_path / "run" / "last.pt").exists()


def test_the_cli_says_the_right_width_and_names_the_bad_cell(tmp_path):
    table = _table(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(d=4, path=table))
    code, lines = _cli(spec, "--out", tmp_path / "run", "--device", "cpu")
    assert code == 2 and len(lines) == 1, lines
    assert "spec.yaml:3:" in lines[0] and "gives [5]" in lines[0] and "input.x=[5]" in lines[0]
    assert not (tmp_path / "run").exists()
    text = table.read_text().splitlines()
    text[7] = text[7].split(",", 1)[0] + ",heavy,red,1,a"  # file line 8
    table.write_text("\n".join(text) + "\n")
    spec.write_text(SPEC.format(d=5, path=table))
    code, lines = _cli(spec, "--out", tmp_path / "run", "--device", "cpu")
    assert code == 2 and len(lines) == 1, lines
    assert "line 8, column 'weight': 'heavy' is not a number" in lines[0]
    assert not (tmp_path / "run").exists()
