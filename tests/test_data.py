"""Built-in data sets, option checking and batching."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

from mtlc.data import DataError, TensorData, correlated, load_dataset, npy_folders, shapes
from mtlc.data.batches import iterate_batches, num_batches

# --- shapes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_train():
    # The default train split: 2000 scenes at 64x64. Rendering it takes about 2 s on 2 CPU
    # cores (2000 + 500 scenes: about 2.5 s), so it is built once for the module.
    return shapes.load("train")


@pytest.fixture(scope="module")
def shapes_small():
    return shapes.load("val", val=200, classes=6, seed=5)


def _boundary(x: torch.Tensor) -> torch.Tensor:
    """Pixels of [N, H, W] with a 4-neighbour of a different value."""
    out = torch.zeros_like(x, dtype=torch.bool)
    h = x[:, :, 1:] != x[:, :, :-1]
    v = x[:, 1:, :] != x[:, :-1, :]
    out[:, :, 1:] |= h
    out[:, :, :-1] |= h
    out[:, 1:, :] |= v
    out[:, :-1, :] |= v
    return out


def _depth_jump(d: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pixels of [N, H, W] next to a relative depth change above ``threshold``."""
    out = torch.zeros_like(d, dtype=torch.bool)
    h = (d[:, :, 1:] - d[:, :, :-1]).abs() / torch.minimum(d[:, :, 1:], d[:, :, :-1]) > threshold
    v = (d[:, 1:, :] - d[:, :-1, :]).abs() / torch.minimum(d[:, 1:, :], d[:, :-1, :]) > threshold
    out[:, :, 1:] |= h
    out[:, :, :-1] |= h
    out[:, 1:, :] |= v
    out[:, :-1, :] |= v
    return out


def test_shapes_default_train_split_shapes_and_dtypes(shapes_train):
    d = shapes_train
    assert len(d) == 2000
    s = 64
    assert d["image"].shape == (2000, 3, s, s) and d["image"].dtype == torch.float32
    assert d["seg"].shape == (2000, s, s) and d["seg"].dtype == torch.int64
    assert d["depth"].shape == (2000, 1, s, s) and d["depth"].dtype == torch.float32
    assert d["normal"].shape == (2000, 3, s, s) and d["normal"].dtype == torch.float32
    assert d["edge"].shape == (2000, 1, s, s) and d["edge"].dtype == torch.float32
    assert d.info["num_classes"] == {"seg": 5}
    assert d.info["inputs"] == {"image": [3, s, s]}
    assert float(d["image"].min()) >= 0.0 and float(d["image"].max()) <= 1.0
    # Every class occurs, and objects cover a real share of the pixels.
    counts = torch.bincount(d["seg"].flatten(), minlength=5)
    assert counts.numel() == 5 and bool((counts > 0).all())
    assert 0.05 < float(counts[1:].sum()) / d["seg"].numel() < 0.5
    # Depth positive everywhere, normals unit everywhere, edges binary.
    assert float(d["depth"].min()) > 0
    assert torch.allclose(d["normal"].norm(dim=1), torch.ones(1), atol=1e-5)
    assert set(d["edge"].unique().tolist()) == {0.0, 1.0}


def test_shapes_determinism():
    a = shapes.load("val", val=6, size=32)
    b = shapes.load("val", val=6, size=32)
    for key in a.tensors:
        assert torch.equal(a[key], b[key]), key
    c = shapes.load("val", val=6, size=32, seed=1)
    assert not torch.equal(a["image"], c["image"])
    t = shapes.load("train", train=6, size=32)
    assert not torch.equal(a["depth"], t["depth"])  # train and val use different seeds


def test_shapes_seed_option_through_load_dataset():
    a = load_dataset({"name": "shapes", "val": 4, "size": 16, "seed": 3}, "val")
    b = shapes.load("val", seed=3, val=4, size=16)
    c = load_dataset({"name": "shapes", "val": 4, "size": 16}, "val", seed=3)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])


def test_shapes_edges_are_label_and_depth_boundaries(shapes_small):
    d = shapes_small
    seg, depth, edge = d["seg"], d["depth"][:, 0], d["edge"][:, 0].bool()
    seg_boundary = _boundary(seg)
    # every segmentation boundary is an edge ...
    assert not bool((seg_boundary & ~edge).any())
    # ... every edge pixel sits at a label change or a depth change ...
    assert not bool((edge & ~(seg_boundary | _depth_jump(depth, 1e-3))).any())
    # ... and large depth jumps (occlusions) are edges (grazing faces may jump a little).
    jumps = _depth_jump(depth, 0.2)
    assert float((jumps & edge).sum()) / float(jumps.sum()) > 0.99
    # some edges are depth-only (an object in front of another of the same class)
    assert edge.float().mean() > 0.01


def test_shapes_normals_match_depth(shapes_small):
    """Normals from the back-projected depth map agree with the normal labels."""
    d = shapes_small
    size = d["depth"].shape[-1]
    depth = d["depth"][:, 0].double()
    tan = math.tan(math.radians(d.info["fov_degrees"]) / 2)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    points = torch.stack([u * tan * depth, -v * tan * depth, -depth], dim=1)  # camera frame
    du = points[:, :, 1:-1, 2:] - points[:, :, 1:-1, :-2]
    dv = points[:, :, 2:, 1:-1] - points[:, :, :-2, 1:-1]
    from_depth = torch.nn.functional.normalize(torch.cross(dv, du, dim=1), dim=1)
    labels = d["normal"][:, :, 1:-1, 1:-1].double()
    edge = d["edge"][:, 0].bool()
    near_edge = (
        edge[:, 1:-1, 1:-1] | edge[:, 2:, 1:-1] | edge[:, :-2, 1:-1] | edge[:, 1:-1, 2:]
    ) | edge[:, 1:-1, :-2]
    cos = (from_depth * labels).sum(1)[~near_edge]
    angle = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))
    # creases (box edges, cylinder rims, ground meets wall) are the only disagreements
    assert float((angle < 2.0).double().mean()) > 0.95
    # normals face the viewing rays: z > 0 for the ground and the wall
    background = d["seg"] == 0
    assert float((d["normal"][:, 2][background] > 0).double().mean()) == 1.0


def test_shapes_colour_correlates_with_class_but_varies(shapes_small):
    d = shapes_small
    rgb = d["image"].permute(0, 2, 3, 1)
    means = torch.stack([rgb[d["seg"] == k].mean(0) for k in range(1, 6)])
    assert means[0, 0] > means[0, 2]  # spheres are reddish
    assert means[2, 2] > means[2, 0]  # cylinders are bluish
    assert float(rgb[d["seg"] == 1].std(0).min()) > 0.05  # but not one flat colour


def test_shapes_option_errors():
    with pytest.raises(DataError, match=r"train\.data\.trian: .*did you mean 'train'"):
        shapes.load("train", trian=10)
    with pytest.raises(DataError, match=r"train\.data\.size: expected an integer"):
        shapes.load("train", size="big")
    with pytest.raises(DataError, match=r"train\.data\.size: expected an integer"):
        shapes.load("train", size=True)
    with pytest.raises(DataError, match=r"train\.data\.classes: expected a value between 2"):
        shapes.load("train", classes=9)
    with pytest.raises(DataError, match="split must be"):
        shapes.load("test")


def test_load_dataset_unknown_name():
    with pytest.raises(DataError, match=r"train\.data\.name: .*did you mean 'shapes'"):
        load_dataset({"name": "shape"}, "train")
    with pytest.raises(DataError, match=r"train\.data\.name: missing"):
        load_dataset({}, "train")


# --- correlated --------------------------------------------------------------------------


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]).double())[0, 1])


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_correlated_linear_parts_have_correlation_p(p):
    d = correlated.load("train", train=20000, correlation=p)
    w = d.info["task_weights"]
    linear = d["x"] @ w.T
    assert abs(_pearson(linear[:, 0], linear[:, 1]) - p) < 0.05
    assert abs(float(torch.nn.functional.cosine_similarity(w[0], w[1], dim=0)) - p) < 1e-5


def test_correlated_targets_follow_the_formula():
    d = correlated.load("val", val=500, dim=20, sines=4, noise=0.0, scale=2.0)
    w, a, b = d.info["task_weights"], d.info["alphas"], d.info["betas"]
    assert d["x"].shape == (500, 20) and d["y1"].shape == (500, 1) and d["y2"].shape == (500, 1)
    assert torch.allclose(w.norm(dim=1), torch.full((2,), 2.0), atol=1e-5)
    lin = d["x"].double() @ w.double().T
    y = lin + torch.sin(lin.unsqueeze(-1) * a.double() + b.double()).sum(-1)
    assert torch.allclose(d["y1"][:, 0].double(), y[:, 0], atol=1e-4)
    assert torch.allclose(d["y2"][:, 0].double(), y[:, 1], atol=1e-4)


def test_correlated_noise_is_the_papers_variance_001_by_default():
    # the paper's ε ~ N(0, 0.01): standard deviation 0.1 around the noiseless formula
    for options, std in [({}, 0.1), ({"noise": 0.3}, 0.3)]:
        d = correlated.load("train", train=20000, dim=10, **options)
        w, a, b = (d.info[k].double() for k in ("task_weights", "alphas", "betas"))
        lin = d["x"].double() @ w.T
        clean = lin + torch.sin(lin.unsqueeze(-1) * a + b).sum(-1)
        residual = torch.cat([d["y1"], d["y2"]], 1).double() - clean
        assert abs(float(residual.mean())) < 0.01
        assert abs(float(residual.std()) / std - 1) < 0.03
        assert abs(_pearson(residual[:, 0], residual[:, 1])) < 0.03  # independent per task


def test_correlated_integer_sine_params():
    # α_j = j, β_j = (j − 1)²: the public generator's values; the targets follow the formula
    # with them, and the directions are the same draw as with the normal α, β
    d = correlated.load("val", val=300, dim=12, sines=5, noise=0.0, sine_params="integer")
    a, b = d.info["alphas"].double(), d.info["betas"].double()
    assert a.tolist() == [1, 2, 3, 4, 5] and b.tolist() == [0, 1, 4, 9, 16]
    lin = d["x"].double() @ d.info["task_weights"].double().T
    y = lin + sum(torch.sin(j * lin + (j - 1) ** 2) for j in range(1, 6))
    assert torch.allclose(torch.cat([d["y1"], d["y2"]], 1).double(), y, atol=1e-4)
    normal = correlated.load("val", val=300, dim=12, sines=5, noise=0.0)
    assert torch.equal(normal.info["task_weights"], d.info["task_weights"])
    assert not torch.equal(normal["y1"], d["y1"])
    with pytest.raises(
        DataError,
        match=r"train\.data\.sine_params: expected one of normal, "
        r"integer, got 'integers' \(did you mean 'integer'\?\)",
    ):
        correlated.load("train", sine_params="integers")


def test_correlated_splits_share_the_task_but_not_the_samples():
    tr = correlated.load("train", train=50, dim=10)
    va = correlated.load("val", val=50, dim=10)
    assert torch.equal(tr.info["task_weights"], va.info["task_weights"])
    assert not torch.equal(tr["x"], va["x"])
    again = correlated.load("train", train=50, dim=10)
    assert torch.equal(tr["y1"], again["y1"])
    other = correlated.load("train", train=50, dim=10, seed=1)
    assert not torch.equal(tr.info["task_weights"], other.info["task_weights"])


def test_correlated_more_tasks():
    d = correlated.load("train", train=20000, dim=30, tasks=3, correlation=0.8)
    assert set(d.tensors) == {"x", "y1", "y2", "y3"}
    lin = d["x"] @ d.info["task_weights"].T
    assert abs(_pearson(lin[:, 0], lin[:, 2]) - 0.8) < 0.05
    assert abs(_pearson(lin[:, 1], lin[:, 2]) - 0.64) < 0.05


def test_correlated_option_errors():
    with pytest.raises(DataError, match=r"train\.data\.correlation: expected a value between"):
        correlated.load("train", correlation=1.5)
    with pytest.raises(DataError, match=r"train\.data\.corelation: .*did you mean 'correlation'"):
        correlated.load("train", corelation=0.5)
    with pytest.raises(DataError, match=r"train\.data\.dim: expected a value at least 4"):
        correlated.load("train", dim=3, tasks=4)


# --- npy folders -------------------------------------------------------------------------


def _write_split(root, split, n, *, label_dir="label", normal=True, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    base = root / split
    for sub in ["image", label_dir, "depth"] + (["normal"] if normal else []):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(base / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
        label = rng.integers(-1, 13, size=(h, w)).astype(np.float32)
        np.save(base / label_dir / f"{i}.npy", label)
        depth = rng.random((h, w, 1)).astype(np.float32)
        depth[0, 0, 0] = 0.0
        np.save(base / "depth" / f"{i}.npy", depth)
        if normal:
            nrm = rng.normal(size=(h, w, 3))
            np.save(base / "normal" / f"{i}.npy", nrm / np.linalg.norm(nrm, axis=-1, keepdims=True))


def test_nyuv2_fixture_loads(tmp_path):
    _write_split(tmp_path, "train", 3)
    _write_split(tmp_path, "test", 2, seed=1)  # the MTAN release calls val "test"
    tr = load_dataset({"name": "nyuv2", "root": str(tmp_path)}, "train")
    assert len(tr) == 3
    assert tr["image"].shape == (3, 3, 8, 8) and tr["image"].dtype == torch.float32
    assert tr["seg"].shape == (3, 8, 8) and tr["seg"].dtype == torch.int64
    assert tr["depth"].shape == (3, 1, 8, 8) and tr["normal"].shape == (3, 3, 8, 8)
    assert int(tr["seg"].min()) == -1  # the ignore value is kept
    raw = np.load(tmp_path / "train" / "image" / "1.npy")
    assert torch.equal(tr["image"][1], torch.from_numpy(raw).permute(2, 0, 1))
    assert tr.info == {"num_classes": {"seg": 13}, "inputs": {"image": [3, 8, 8]}}
    va = load_dataset({"name": "nyuv2", "root": str(tmp_path)}, "val")
    assert len(va) == 2
    lim = npy_folders.load_nyuv2("train", root=str(tmp_path), limit=2)
    assert len(lim) == 2 and torch.equal(lim["depth"], tr["depth"][:2])


def test_nyuv2_prefers_val_over_test(tmp_path):
    _write_split(tmp_path, "train", 1)
    _write_split(tmp_path, "test", 2)
    _write_split(tmp_path, "val", 3)
    assert len(npy_folders.load_nyuv2("val", root=str(tmp_path))) == 3


def test_cityscapes_fixture_loads(tmp_path):
    _write_split(tmp_path, "train", 2, label_dir="label_7", normal=False)
    _write_split(tmp_path, "val", 2, label_dir="label_19", normal=False)
    tr = load_dataset({"name": "cityscapes", "root": str(tmp_path)}, "train")
    assert set(tr.tensors) == {"image", "seg", "depth"}
    assert tr.info["num_classes"] == {"seg": 7}
    va = load_dataset({"name": "cityscapes", "root": str(tmp_path), "classes": 19}, "val")
    assert va.info["num_classes"] == {"seg": 19}
    with pytest.raises(DataError, match="label_7"):
        load_dataset({"name": "cityscapes", "root": str(tmp_path)}, "val")
    with pytest.raises(DataError, match=r"train\.data\.classes: expected 7 or 19"):
        load_dataset({"name": "cityscapes", "root": str(tmp_path), "classes": 8}, "val")


def test_npy_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"train\.data\.root: the folder .*nowhere.* does not"):
        npy_folders.load_nyuv2("train", root=str(missing))
    with pytest.raises(DataError, match=r"train\.data\.root: data set 'nyuv2' needs this option"):
        npy_folders.load_nyuv2("train")

    _write_split(tmp_path, "train", 3)
    with pytest.raises(DataError, match=r"val split folder .*val.* or .*test.* does not exist"):
        npy_folders.load_nyuv2("val", root=str(tmp_path))

    (tmp_path / "train" / "label" / "2.npy").unlink()
    with pytest.raises(DataError) as err:
        npy_folders.load_nyuv2("train", root=str(tmp_path))
    assert str(tmp_path / "train" / "label" / "2.npy") in str(err.value)

    _write_split(tmp_path, "test", 2)
    for f in (tmp_path / "test" / "depth").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"holds no N\.npy files"):
        npy_folders.load_nyuv2("val", root=str(tmp_path))
    (tmp_path / "test" / "depth").rmdir()
    with pytest.raises(DataError) as err:
        npy_folders.load_nyuv2("val", root=str(tmp_path))
    assert repr(str(tmp_path / "test" / "depth")) in str(err.value)

    with pytest.raises(DataError, match=r"train\.data\.limt: .*did you mean 'limit'"):
        npy_folders.load_nyuv2("train", root=str(tmp_path), limt=2)


def test_npy_pickles_are_refused(tmp_path):
    _write_split(tmp_path, "train", 1)
    np.save(tmp_path / "train" / "image" / "0.npy", np.array([{"a": 1}], dtype=object))
    # refused from the header, before numpy would have to unpickle anything
    with pytest.raises(DataError, match="holds object values; expected numbers"):
        npy_folders.load_nyuv2("train", root=str(tmp_path))


# --- callable ----------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    pkg = tmp_path / "mtlc_user_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(
        textwrap.dedent(
            """
            import torch

            def make_data(split, seed, n=4):
                g = torch.Generator().manual_seed(seed + (split == "val"))
                return {"x": torch.randn(n, 3, generator=g), "y": torch.zeros(n, 1)}

            def bad(split, seed):
                return {"x": torch.zeros(3, 2), "y": torch.zeros(4, 1)}

            def not_a_dict(split, seed):
                return [1, 2]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mtlc_user_pkg"
    for name in [m for m in sys.modules if m.startswith("mtlc_user_pkg")]:
        del sys.modules[name]


def test_callable_refuses_import_without_permission(user_module):
    spec = {"name": "callable", "function": "mtlc_user_pkg.data:make_data"}
    with pytest.raises(DataError, match=r"importing 'mtlc_user_pkg' needs --allow-import"):
        load_dataset(spec, "train")
    assert "mtlc_user_pkg.data" not in sys.modules


def test_callable_with_permission(user_module):
    spec = {"name": "callable", "function": "mtlc_user_pkg.data:make_data", "n": 6}
    allow = frozenset({"mtlc_user_pkg"})
    d = load_dataset(spec, "train", seed=2, allow_import=allow)
    assert isinstance(d, TensorData) and len(d) == 6 and set(d.tensors) == {"x", "y"}
    again = load_dataset(spec, "train", seed=2, allow_import=allow)
    assert torch.equal(d["x"], again["x"])
    val = load_dataset(spec, "val", seed=2, allow_import=allow)
    assert not torch.equal(d["x"], val["x"])


def test_callable_validates_what_it_gets(user_module):
    allow = frozenset({"mtlc_user_pkg"})
    with pytest.raises(DataError, match="share their first dimension"):
        load_dataset(
            {"name": "callable", "function": "mtlc_user_pkg.data:bad"}, "train", allow_import=allow
        )
    with pytest.raises(DataError, match="returned list"):
        load_dataset(
            {"name": "callable", "function": "mtlc_user_pkg.data:not_a_dict"},
            "train",
            allow_import=allow,
        )
    with pytest.raises(DataError, match="has no attribute 'nope'"):
        load_dataset(
            {"name": "callable", "function": "mtlc_user_pkg.data:nope"}, "train", allow_import=allow
        )
    with pytest.raises(DataError, match=r"expected 'package\.module:function'"):
        load_dataset({"name": "callable", "function": "mtlc_user_pkg.data"}, "train")


# --- TensorData and batches --------------------------------------------------------------


def test_tensor_data_checks_first_dim():
    with pytest.raises(DataError, match="share their first dimension"):
        TensorData({"a": torch.zeros(3, 2), "b": torch.zeros(4)})
    assert len(TensorData({"a": torch.zeros(3, 2), "b": torch.zeros(3)})) == 3


def test_iterate_batches_covers_the_split():
    data = TensorData({"i": torch.arange(10), "x": torch.arange(10).float().unsqueeze(1) * 2})
    plain = list(iterate_batches(data, 4, shuffle=False))
    assert [b["i"].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert num_batches(10, 4) == 3 and num_batches(10, 4, drop_last=True) == 2

    g = torch.Generator().manual_seed(0)
    shuffled = list(iterate_batches(data, 4, shuffle=True, generator=g))
    seen = torch.cat([b["i"] for b in shuffled])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for b in shuffled:  # rows stay aligned across keys
        assert torch.equal(b["x"][:, 0], b["i"].float() * 2)
    again = list(iterate_batches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a["i"], b["i"]) for a, b in zip(shuffled, again))
    dropped = list(iterate_batches(data, 4, shuffle=True, drop_last=True))
    assert [len(b["i"]) for b in dropped] == [4, 4]
