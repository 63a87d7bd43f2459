"""Every file mtlc writes goes through mtlc.atomic: checked before any work, never through
a link, whole or not at all. The writers outside the run folder (profile --csv, viz -o,
diff -o) and run folders named by a link, plus a scan of the sources for writers that
bypass the atomic writer.
"""

from __future__ import annotations

import ast
import csv
import os
from pathlib import Path

import pytest
from test_run_safety import _fill_disk, cli, files, one_error, trained

import mtlc
from mtlc import atomic
from mtlc.profile import command as profile_command
from mtlc.train import command
from mtlc.viz import command as viz_command

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = "x" * 300


def _never(*args, **kwargs):
    raise AssertionError("the work ran before the output path was checked")


# -- profile --csv ---------------------------------------------------------------------


def test_profile_csv_is_written_atomically_and_reads_back(small_spec: Path, tmp_path: Path):
    out = tmp_path / "new" / "costs.csv"
    code, lines = cli(profile_command.profile, small_spec, "--csv", out, "--by", "stage")
    assert code == 0, lines
    from mtlc.profile.report import profile_spec

    rows = list(csv.DictReader(out.open(newline="")))
    expected = profile_spec(str(small_spec)).rows("stage")
    assert [r["stage"] for r in rows] == ["input", "s1", "s2", "heads"]
    assert rows == [{"spec": "small", **{k: str(v) for k, v in r.items()}} for r in expected]
    assert sorted(p.name for p in out.parent.iterdir()) == ["costs.csv"]  # no temp file left
    assert out.stat().st_mode & 0o777 == atomic.file_mode()


def test_profile_csv_through_a_link_is_refused_before_profiling(
    small_spec: Path, tmp_path: Path, monkeypatch
):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    link = tmp_path / "costs.csv"
    link.symlink_to(notes)
    monkeypatch.setattr("mtlc.profile.report.profile_spec", _never)
    code, lines = cli(profile_command.profile, small_spec, "--csv", link)
    one_error(code, lines, 2, f"{link}: is a symbolic link; mtlc never writes through a link")
    code, lines = cli(profile_command.profile, small_spec, "--csv", tmp_path / f"{LONG}.csv")
    one_error(code, lines, 2, "bytes long; this file system allows at most")
    assert notes.read_text() == "my notes" and link.is_symlink()


def test_profile_csv_on_a_full_disk_keeps_the_old_file(
    small_spec: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "costs.csv"
    out.write_text("old table\n")
    _fill_disk(monkeypatch)
    code, lines = cli(profile_command.profile, small_spec, "--csv", out)
    one_error(code, lines, 1, f"cannot write '{out}': No space left on device")
    assert out.read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["costs.csv", "spec.yaml"]


# -- viz -o and diff -o ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["viz", "diff"])
def test_drawing_outputs_are_checked_before_drawing(
    small_spec: Path, tmp_path: Path, monkeypatch, which: str
):
    """A too-long name, a link, a read-only folder: exit 2, nothing drawn or written."""
    monkeypatch.setattr(mtlc.viz, "_sources", _never)
    monkeypatch.setattr("mtlc.viz.diff.compare", _never)
    cmd = viz_command.viz if which == "viz" else viz_command.diff
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    link = tmp_path / "drawing.dot"
    link.symlink_to(notes)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda p, m: real(p, m) and Path(p) != ro)
    before = files(tmp_path)
    for output, expected in [
        (tmp_path / f"{LONG}.dot", "bytes long; this file system allows at most"),
        (tmp_path / LONG / "d.dot", "bytes long; this file system allows at most"),
        (link, "is a symbolic link; mtlc never writes through a link"),
        (ro / "d.dot", f"cannot write in {ro}"),
        (tmp_path / "spec.yaml" / "d.dot", "is not a folder"),
    ]:
        code, lines = cli(cmd, small_spec, "-o", output)
        one_error(code, lines, 2, expected)
    assert files(tmp_path) == before


def test_viz_and_diff_write_their_drawings(small_spec: Path, tmp_path: Path):
    for cmd, name in [(viz_command.viz, "v.dot"), (viz_command.diff, "d.dot")]:
        out = tmp_path / "new" / name
        code, lines = cli(cmd, small_spec, "-o", out)
        assert code == 0, lines
        assert out.read_text().lstrip().startswith(("digraph", "strict digraph"))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["d.dot", "v.dot"]


# -- a run folder that is a link -----------------------------------------------------------


def test_a_run_folder_that_is_a_link_is_refused(tiny: Path, tmp_path: Path):  # noqa: F811
    """--force would clean wherever the link points, and every file would land there."""
    real = trained(tiny, tmp_path / "real")
    link = tmp_path / "run"
    link.symlink_to(real, target_is_directory=True)
    before = files(real)
    for args in (["--force"], ["--resume", "--epochs", 2], []):
        code, lines = cli(command.train, tiny, "--out", link, "--device", "cpu", *args)
        one_error(code, lines, 2, f"{link}: is a symbolic link")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "elink").symlink_to(empty, target_is_directory=True)
    code, lines = cli(command.train, tiny, "--out", tmp_path / "elink", "--device", "cpu")
    one_error(code, lines, 2, "is a symbolic link")
    code, lines = cli(command.sweep, tiny, "--grid", "train.seed=1,2", "--out", tmp_path / "elink")
    one_error(code, lines, 2, "is a symbolic link")
    assert files(real) == before and list(empty.iterdir()) == []


def test_a_link_among_the_parents_of_the_run_folder_is_the_users_layout(
    tiny: Path,  # noqa: F811
    tmp_path: Path,
):
    (tmp_path / "disk").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "disk", target_is_directory=True)
    trained(tiny, tmp_path / "runs" / "a")
    assert (tmp_path / "disk" / "a" / "summary.json").is_file()


# -- no writer bypasses mtlc.atomic ------------------------------------------------------

# TensorBoard's SummaryWriter writes its own event files, with fresh unique names, into
# the run folder's tensorboard/ (a folder mtlc created and checks is not a link).
WRITE_MODES = set("wax+")
SAVERS = {
    "savefig": 0,
    "save": 1,
    "savez": 0,
    "savez_compressed": 0,
    "savetxt": 0,
    "save_model": 1,
}
# modules whose savers are handed the temporary path of an `atomic_path` block elsewhere
TEMP_PATH_WRITERS = {"export/writers.py"}  # called by export/pipeline.py inside atomic_path


def _bypasses(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that write a file without the atomic writer: open(…, "w"), Path.write_text,
    os.open for writing, and savefig/torch.save/np.save into anything but a handle from
    `atomic_open` or an in-memory buffer."""
    handles = {"buffer"}
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "id", getattr(call.func, "attr", ""))
                    in ("atomic_open", "atomic_path")
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    handles.add(item.optional_vars.id)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = getattr(func, "id", getattr(func, "attr", ""))
        args = [*node.args, *(k.value for k in node.keywords if k.arg == "mode")]
        strings = [a.value for a in args if isinstance(a, ast.Constant)]
        via_os = isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "os"
        writes = any(isinstance(s, str) and WRITE_MODES & set(s) for s in strings)
        if name == "open" and writes and not via_os:
            found.append((node.lineno, "open for writing"))
        if name == "open" and getattr(getattr(func, "value", None), "id", "") == "os":
            flags = ast.dump(node)
            if "O_WRONLY" in flags or "O_RDWR" in flags or "O_CREAT" in flags:
                found.append((node.lineno, "os.open for writing"))
        if isinstance(func, ast.Attribute) and name in ("write_text", "write_bytes"):
            found.append((node.lineno, f".{name}"))
        if name in SAVERS and isinstance(func, ast.Attribute):
            where = SAVERS[name]
            target = node.args[where] if len(node.args) > where else None
            if not (isinstance(target, ast.Name) and target.id in handles):
                found.append((node.lineno, f"{name} into {ast.unparse(target or node)}"))
    return found


def test_no_writer_bypasses_the_atomic_writer():
    root = Path(mtlc.__file__).parent
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == "atomic.py" or rel in TEMP_PATH_WRITERS:
            continue
        for line, what in _bypasses(ast.parse(path.read_text(encoding="utf-8"))):
            bad.append(f"{path.relative_to(root)}:{line}: {what}")
    assert bad == []


def test_the_bypass_scan_finds_what_it_looks_for():
    """The scan above would have caught the plain open() profile --csv used to write with."""
    source = """
with open(path, "w", newline="") as fh: pass
Path(p).write_text("x")
fig.savefig(run_dir / "loss.png")
torch.save(model, path)
np.save(path, array)
os.open(path, os.O_WRONLY | os.O_CREAT)
with atomic_path(path) as tmp:
    onnx.save_model(proto, tmp)
with atomic_open(path, "wb") as fh:
    torch.save(model, fh)
    fig.savefig(fh, format="png")
fig.savefig(buffer, format="png")
with open(path, "rb") as fh: pass
"""
    assert sorted(line for line, _ in _bypasses(ast.parse(source))) == [2, 3, 4, 5, 6, 7]
