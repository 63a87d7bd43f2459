"""``csv``: a table of your own, one sample a row, read with Python's ``csv`` module.

Options (under ``train.data``)::

    {name: csv, path: table.csv,             # required; the header row names the columns
     targets: {task: column, ...},           # required; one column per task
     inputs: [column, ...],                  # default: every column that is not a target
     categorical: [column, ...],             # text or code columns (inputs or targets)
     encoding: one_hot,                      # how categorical inputs enter `x`
     val_fraction: 0.2,                      # share of the rows held out for validation
     val_path: other.csv,                    # or: validation rows from a second file
     delimiter: ",", seed: 0}

Paths are used as written: a relative path is relative to the working directory mtlc runs
in, like ``root`` of ``nyuv2`` and ``cityscapes`` (not relative to the spec file).

Tensors. ``x`` float32 [N, D] holds the inputs in the order of ``inputs``: a numeric
column is one feature, a categorical column K features, a one-hot block over its K
distinct values (``info["features"]`` names every feature, e.g. ``color=red``). So the
spec's input is ``input: {x: [D]}``; a wrong D is refused by the trainer with the right
one. Each task gets the batch entry of its own name: a numeric target column is float32
[N, 1] (for ``mse``, ``l1``, ``smooth_l1``, ``bce``); a target column listed in
``categorical`` becomes class ids int64 [N] (for ``cross_entropy`` and ``accuracy``),
with ``info["num_classes"][task] = K`` and the class names in ``info["classes"]``.

Categories are the distinct values of a column in both splits (both files when
``val_path`` is set), sorted numerically when every value is a number and as text
otherwise, so ids and one-hot positions are the same in train and val and do not depend
on the row order. ``encoding: embedded`` (a learned embedding per categorical column) is
refused: it needs a learned layer in front of the encoder, which a spec's input stage
does not have; one-hot input followed by a ``linear`` layer is the same model (an
embedding lookup is a linear map of the one-hot vector).

The split: with ``val_fraction: f`` (default 0.2 without ``val_path``) round(f·N) rows chosen by
a permutation drawn from ``seed`` go to validation and the rest, in file order, to
training; the same seed gives the same split. Blank lines are skipped. Errors are one line
naming the file, the line and the column: a missing or non-regular file (a FIFO is never
opened), an empty file or one without rows, duplicate or empty header names, a row with
more or fewer cells than the header, text (or nothing, or nan/inf) where a number is
needed, a column that does not exist (with did-you-mean), a target that is also an input.
"""

from __future__ import annotations

import csv
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import torch

from mtlc.data import (
    DataError,
    TensorData,
    check_memory,
    check_options,
    check_range,
    check_split,
    derived_seed,
    option_path,
)
from mtlc.errors import did_you_mean

__all__ = ["load", "read_table"]

SCHEMA = {
    "path": (str, None),
    "val_path": ((str, type(None)), None),
    "targets": (dict, None),
    "inputs": ((list, type(None)), None),
    "categorical": (list, []),
    "encoding": (str, "one_hot"),
    "val_fraction": ((float, type(None)), None),
    "delimiter": (str, ","),
}
DEFAULT_SPLIT = 0.2
INPUT_KEY = "x"


class Table:
    """A csv file's header and rows of text cells, with the file line of each row."""

    def __init__(
        self, key: str, path: Path, header: list[str], rows: list[list[str]], lines: list[int]
    ):
        self.key, self.path, self.header, self.rows, self.lines = key, path, header, rows, lines

    def where(self, i: int | None = None, column: str | None = None) -> str:
        out = f"{option_path(self.key)}: {str(self.path)!r}"
        if i is not None:
            out += f" line {self.lines[i]}"
        if column is not None:
            out += f", column {column!r}"
        return out

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j] for row in self.rows]


def read_table(key: str, path: str | os.PathLike, delimiter: str = ",") -> Table:
    """Read a csv file into a :class:`Table`; every problem is a one-line DataError.

    Only a regular file is opened: a FIFO named ``table.csv`` would block forever.
    """
    p = Path(path).expanduser()
    where = f"{option_path(key)}: {str(p)!r}"
    try:
        info = os.stat(p)
    except FileNotFoundError:
        raise DataError(
            f"{where}: no such file (relative paths start at the working directory)."
        ) from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read it: {exc.strerror or exc}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{where}: not a regular file.")
    check_memory(key, f"the table {str(p)!r}", info.st_size * 40)
    rows: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # a blank line
                cells = [cell.strip() for cell in row]
                if header is None:
                    header = cells
                    header_line = reader.line_num
                    continue
                if len(cells) != len(header):
                    raise DataError(
                        f"{where} line {reader.line_num}: {len(cells)} cells, but the header "
                        f"(line {header_line}) names {len(header)} columns."
                    )
                rows.append(cells)
                lines.append(reader.line_num)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start}).") from None
    except csv.Error as exc:
        raise DataError(f"{where}: not a valid csv file ({exc}).") from None
    except OSError as exc:
        raise DataError(f"{where}: cannot read it: {exc.strerror or exc}.") from None
    if header is None:
        raise DataError(f"{where}: the file is empty; expected a header row and data rows.")
    for j, name in enumerate(header):
        if not name:
            raise DataError(
                f"{where} line {header_line}: column {j + 1} of the header has no name."
            )
        if header.index(name) != j:
            raise DataError(f"{where} line {header_line}: the header names column {name!r} twice.")
    if not rows:
        raise DataError(f"{where}: the file has a header but no data rows.")
    return Table(key, p, header, rows, lines)


def _number(table: Table, i: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        what = f"{text!r} is not a number" if text else "the cell is empty; a number is needed"
        raise DataError(f"{table.where(i, column)}: {what}.") from None
    if not math.isfinite(value):
        raise DataError(f"{table.where(i, column)}: {text!r} is not a finite number.")
    return value


def _numbers(table: Table, column: str) -> list[float]:
    return [_number(table, i, column, text) for i, text in enumerate(table.column(column))]


def _categories(tables: Sequence[Table], column: str) -> list[str]:
    """The distinct values of ``column`` over ``tables``: numerically sorted if all numbers."""
    values = {v for t in tables for v in t.column(column)}
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _check_column(table: Table, key: str, name: object) -> str:
    if not isinstance(name, str) or name not in table.header:
        hint = did_you_mean(str(name), table.header)
        raise DataError(
            f"{option_path(key)}: {str(table.path)!r} has no column {name!r}{hint}; "
            f"its columns are {', '.join(table.header)}."
        )
    return name


def _string_list(key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{option_path(key)}: expected a list of column names, got {value!r}.")
    seen: set[str] = set()
    for v in value:
        if v in seen:
            raise DataError(f"{option_path(key)}: column {v!r} is listed twice.")
        seen.add(v)
    return list(value)


def _tensors(table: Table, plan: dict) -> dict[str, torch.Tensor]:
    """``x`` and one tensor per task from ``table``, encoded as ``plan`` says."""
    features: list[torch.Tensor] = []
    n = len(table.rows)
    for column in plan["inputs"]:
        if column in plan["categories"]:
            cats = plan["categories"][column]
            ids = torch.tensor([cats.index(v) for v in table.column(column)], dtype=torch.long)
            features.append(torch.nn.functional.one_hot(ids, len(cats)).to(torch.float32))
        else:
            values = torch.tensor(_numbers(table, column), dtype=torch.float64)
            features.append(values.to(torch.float32).reshape(n, 1))
    x = torch.cat(features, dim=1) if features else torch.zeros(n, 0)
    out = {INPUT_KEY: x}
    for task, column in plan["targets"].items():
        if column in plan["categories"]:
            cats = plan["categories"][column]
            out[task] = torch.tensor(
                [cats.index(v) for v in table.column(column)], dtype=torch.long
            )
        else:
            out[task] = torch.tensor(_numbers(table, column), dtype=torch.float32).reshape(n, 1)
    return out


def load(split: str, *, seed: int = 0, **options) -> TensorData:
    """Read the ``split`` of a csv table (see the module docstring for the options)."""
    check_split(split)
    o = check_options("csv", options, SCHEMA, required=("path", "targets"))
    if o["encoding"] != "one_hot":
        if o["encoding"] == "embedded":
            raise DataError(
                f"{option_path('encoding')}: 'embedded' needs a learned embedding layer in "
                "front of the encoder, which a spec's input does not have; use 'one_hot' "
                "(a linear layer on the one-hot block is the same model as an embedding)."
            )
        raise DataError(f"{option_path('encoding')}: expected 'one_hot', got {o['encoding']!r}.")
    if len(o["delimiter"]) != 1:
        raise DataError(
            f"{option_path('delimiter')}: expected one character, got {o['delimiter']!r}."
        )
    if o["val_fraction"] is not None and o["val_path"] is not None:
        raise DataError(
            f"{option_path('val_fraction')}: set either val_fraction (a share of one file) or val_path "
            "(a second file), not both."
        )
    share = DEFAULT_SPLIT if o["val_fraction"] is None else o["val_fraction"]
    if o["val_path"] is None:
        check_range("val_fraction", share, 0.0, 1.0)
    targets = o["targets"]
    if not targets or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in targets.items()
    ):
        raise DataError(
            f"{option_path('targets')}: expected a mapping of task name to column, got {targets!r}."
        )
    if INPUT_KEY in targets:
        raise DataError(
            f"{option_path('targets')}: a task cannot be named {INPUT_KEY!r}, the batch "
            "entry of the inputs."
        )
    main = read_table("path", o["path"], o["delimiter"])
    tables = [main]
    if o["val_path"] is not None:
        other = read_table("val_path", o["val_path"], o["delimiter"])
        if other.header != main.header:
            raise DataError(
                f"{other.where()}: its header ({', '.join(other.header)}) differs from "
                f"{str(main.path)!r}'s ({', '.join(main.header)})."
            )
        tables.append(other)
    for task, column in targets.items():
        _check_column(main, f"targets.{task}", column)
    target_columns = set(targets.values())
    if o["inputs"] is None:
        inputs = [c for c in main.header if c not in target_columns]
    else:
        inputs = _string_list("inputs", o["inputs"])
        for column in inputs:
            _check_column(main, "inputs", column)
            if column in target_columns:
                task = next(t for t, c in targets.items() if c == column)
                raise DataError(
                    f"{option_path('inputs')}: column {column!r} is the target of task {task!r}; "
                    "a target cannot also be an input."
                )
    if not inputs:
        raise DataError(f"{option_path('inputs')}: no input columns are left besides the targets.")
    categorical = _string_list("categorical", o["categorical"])
    for column in categorical:
        _check_column(main, "categorical", column)
        if column not in inputs and column not in target_columns:
            raise DataError(
                f"{option_path('categorical')}: column {column!r} is neither an input nor a target."
            )
    plan = {
        "inputs": inputs,
        "targets": dict(targets),
        "categories": {c: _categories(tables, c) for c in categorical},
    }
    if o["val_path"] is not None:
        table = tables[0] if split == "train" else tables[1]
    else:
        n = len(main.rows)
        n_val = round(share * n)
        if n_val < 1 or n_val >= n:
            raise DataError(
                f"{option_path('val_fraction')}: {share} of {n} rows leaves "
                f"{n - n_val} for training and {n_val} for validation; each needs at least one."
            )
        g = torch.Generator().manual_seed(derived_seed(seed, "csv", "split"))
        val_rows = set(torch.randperm(n, generator=g)[:n_val].tolist())
        keep = [i for i in range(n) if (i in val_rows) == (split == "val")]
        table = Table(
            "path",
            main.path,
            main.header,
            [main.rows[i] for i in keep],
            [main.lines[i] for i in keep],
        )
    tensors = _tensors(table, plan)
    features = [
        f"{c}={v}" if c in plan["categories"] else c
        for c in inputs
        for v in plan["categories"].get(c, [c])
    ]
    info = {
        "inputs": {INPUT_KEY: [int(tensors[INPUT_KEY].shape[1])]},
        "num_classes": {
            t: len(plan["categories"][c]) for t, c in targets.items() if c in plan["categories"]
        },
        "classes": {
            t: plan["categories"][c] for t, c in targets.items() if c in plan["categories"]
        },
        "targets": list(targets),
        "features": features,
    }
    return TensorData(tensors, info)
