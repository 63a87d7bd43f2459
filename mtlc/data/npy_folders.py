"""``nyuv2`` and ``cityscapes`` in the MTAN release's preprocessed ``.npy`` layout.

The layout (Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019)::

    root/train/image/0.npy   H×W×3 float   (the release stores RGB in [0, 1])
    root/train/label/0.npy   H×W   class ids, -1 = ignore        (NYUv2: 13 classes)
    root/train/depth/0.npy   H×W×1 float, 0 = no measurement
    root/train/normal/0.npy  H×W×3 unit normals                   (NYUv2 only)
    root/val/...             the same; the release names this folder ``test``, which is
                             used when ``val`` is absent

Cityscapes uses ``label_7/`` (7 classes, the default) or ``label_19/`` (``classes: 19``)
instead of ``label/``, and has no normals.

Options: ``root`` (required), ``limit`` (load only the first ``limit`` files, by index),
and for Cityscapes ``classes`` (7 or 19). Values are kept as stored: images are not
re-normalised, the ignore label stays -1 (the metrics' and losses' ``ignore_index``), and
depth 0 marks invalid pixels (the ``ignore_zero`` convention). Output tensors: ``image``
float32 [N, 3, H, W], ``seg`` int64 [N, H, W], ``depth`` float32 [N, 1, H, W] and for NYUv2
``normal`` float32 [N, 3, H, W]. Files are read with ``numpy.load(allow_pickle=False)``,
and only regular files whose .npy header declares numbers that are in the file (a
FIFO, an .npz renamed, strings, a forged header are one-line errors); the split's size
is checked against the memory available before anything is read.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import torch

from mtlc.data import (
    DataError,
    TensorData,
    check_memory,
    check_options,
    check_range,
    check_split,
)

__all__ = ["load_cityscapes", "load_nyuv2", "load_npy_folders"]

_INDEX = re.compile(r"^(\d+)\.npy$")


def _split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise DataError(f"train.data.root: the folder {str(root)!r} does not exist.")
    names = ["train"] if split == "train" else ["val", "test"]
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(repr(str(root / n)) for n in names)
    raise DataError(f"train.data.root: the {split} split folder {wanted} does not exist.")


def _indices(folder: Path) -> list[int]:
    if not folder.is_dir():
        raise DataError(f"train.data.root: the folder {str(folder)!r} does not exist.")
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError as exc:
        raise DataError(
            f"train.data.root: cannot read the folder {str(folder)!r}: {exc.strerror or exc}."
        ) from None
    found = sorted(int(m.group(1)) for name in names if (m := _INDEX.match(name)))
    if not found:
        raise DataError(f"train.data.root: the folder {str(folder)!r} holds no N.npy files.")
    return found


def _header(path: Path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy file's header declares, checked against the file.

    Only a regular file is opened (a FIFO named ``0.npy`` would block forever), the
    header must be an .npy header (an .npz or pickle renamed is refused), the dtype a
    number type (strings and objects cannot become tensors), and the data the header
    declares must be in the file, so a forged header cannot make numpy allocate
    terabytes.
    """
    where = f"train.data.root: {str(path)!r} ({what})"
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(f"{where}: cannot read it: {exc.strerror or exc}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{where}: not a regular file.")
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                fh.seek(0)
                start = fh.read(4)
                kind = "an .npz archive" if start == b"PK\x03\x04" else "not an .npy file"
                raise DataError(f"{where}: {kind} (empty)." if not start else f"{where}: {kind}.")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
            offset = fh.tell()
    except DataError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise DataError(f"{where}: not a valid .npy header ({_first_line(exc)}).") from None
    if dtype.kind not in "biuf":
        raise DataError(
            f"{where}: holds {dtype} values; expected numbers (bool, integer or float)."
        )
    expected = math.prod(shape) * dtype.itemsize
    if info.st_size - offset < expected:
        raise DataError(
            f"{where}: its header declares {list(shape)} {dtype} ({expected} bytes), but "
            f"the file holds {max(info.st_size - offset, 0)} bytes after the header."
        )
    return shape, dtype


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: Path, shape_hint: str) -> np.ndarray:
    _header(path, shape_hint)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"train.data.root: cannot read {str(path)!r} ({shape_hint}): {_first_line(exc)}."
        ) from None


def _check_size(base: Path, folders: dict[str, str], indices: list[int]) -> None:
    """The whole split's tensors against the memory available, from the files' headers."""
    needed = 0
    for key, name in folders.items():
        for i in indices:
            shape, _ = _header(base / name / f"{i}.npy", key)
            # numpy arrays, their stack, and the float32/int64 tensor made from it
            needed += math.prod(shape) * (8 if key == "seg" else 4) * 3
    check_memory("root", f"the {len(indices)} samples in {str(base)!r}", needed)


def _stack(folder: Path, indices: list[int], kind: str) -> np.ndarray:
    arrays = [_read(folder / f"{i}.npy", kind) for i in indices]
    first = arrays[0].shape
    for i, a in zip(indices, arrays):
        if a.shape != first:
            raise DataError(
                f"train.data.root: {str(folder / f'{i}.npy')!r} has shape {a.shape}, but "
                f"{str(folder / f'{indices[0]}.npy')!r} has {first}."
            )
    return np.stack(arrays)


def _channels_first(a: np.ndarray, channels: int, folder: Path) -> torch.Tensor:
    if a.ndim == 3 and channels == 1:  # H×W stored without the channel axis
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] != channels:
        raise DataError(
            f"train.data.root: files in {str(folder)!r} have shape {a.shape[1:]}, "
            f"expected H×W×{channels}."
        )
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float()


def load_npy_folders(
    root: str | Path,
    split: str,
    *,
    label_dir: str,
    with_normal: bool,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Read one split of an MTAN-layout folder tree into tensors."""
    base = _split_dir(Path(root).expanduser(), split)
    folders = {"image": "image", "seg": label_dir, "depth": "depth"}
    if with_normal:
        folders["normal"] = "normal"
    found = {key: _indices(base / name) for key, name in folders.items()}
    reference = found["image"]
    for key, name in folders.items():
        missing = sorted(set(reference) - set(found[key]))
        extra = sorted(set(found[key]) - set(reference))
        if missing:
            path = base / name / f"{missing[0]}.npy"
            raise DataError(
                f"train.data.root: {str(path)!r} is missing ({len(found[key])} files in "
                f"{str(base / name)!r}, {len(reference)} in {str(base / 'image')!r})."
            )
        if extra:
            path = base / "image" / f"{extra[0]}.npy"
            raise DataError(
                f"train.data.root: {str(path)!r} is missing ({len(reference)} files in "
                f"{str(base / 'image')!r}, {len(found[key])} in {str(base / name)!r})."
            )
    indices = reference[:limit] if limit is not None else reference
    _check_size(base, folders, indices)
    out: dict[str, torch.Tensor] = {}
    out["image"] = _channels_first(_stack(base / "image", indices, "H×W×3"), 3, base / "image")
    seg = _stack(base / label_dir, indices, "H×W labels")
    if seg.ndim == 4 and seg.shape[-1] == 1:
        seg = seg[..., 0]
    if seg.ndim != 3:
        raise DataError(
            f"train.data.root: files in {str(base / label_dir)!r} have shape {seg.shape[1:]}, "
            "expected H×W."
        )
    out["seg"] = torch.from_numpy(np.rint(seg).astype(np.int64))
    out["depth"] = _channels_first(_stack(base / "depth", indices, "H×W×1"), 1, base / "depth")
    if with_normal:
        normal = _stack(base / "normal", indices, "H×W×3")
        out["normal"] = _channels_first(normal, 3, base / "normal")
    hw = out["image"].shape[-2:]
    for key, value in out.items():
        if value.shape[-2:] != hw:
            raise DataError(
                f"train.data.root: {key} files in {str(base)!r} are {tuple(value.shape[-2:])} "
                f"pixels but images are {tuple(hw)}."
            )
    return out


def _info(tensors: dict[str, torch.Tensor], classes: int) -> dict:
    h, w = tensors["image"].shape[-2:]
    return {"num_classes": {"seg": classes}, "inputs": {"image": [3, int(h), int(w)]}}


def load_nyuv2(split: str, *, seed: int = 0, **options) -> TensorData:
    """NYUv2 (13 classes, depth, normals) from the MTAN layout. ``seed`` is unused."""
    check_split(split)
    o = check_options(
        "nyuv2",
        options,
        {"root": (str, None), "limit": ((int, type(None)), None)},
        required=("root",),
    )
    if o["limit"] is not None:
        check_range("limit", o["limit"], 1)
    tensors = load_npy_folders(
        o["root"], split, label_dir="label", with_normal=True, limit=o["limit"]
    )
    return TensorData(tensors, _info(tensors, 13))


def load_cityscapes(split: str, *, seed: int = 0, **options) -> TensorData:
    """Cityscapes (7 or 19 classes, depth) from the MTAN layout. ``seed`` is unused."""
    check_split(split)
    o = check_options(
        "cityscapes",
        options,
        {"root": (str, None), "limit": ((int, type(None)), None), "classes": (int, 7)},
        required=("root",),
    )
    if o["limit"] is not None:
        check_range("limit", o["limit"], 1)
    if o["classes"] not in (7, 19):
        raise DataError(f"train.data.classes: expected 7 or 19, got {o['classes']!r}.")
    tensors = load_npy_folders(
        o["root"], split, label_dir=f"label_{o['classes']}", with_normal=False, limit=o["limit"]
    )
    return TensorData(tensors, _info(tensors, o["classes"]))
