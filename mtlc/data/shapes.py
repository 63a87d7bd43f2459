"""``shapes``: small procedurally rendered 3-D scenes with five consistent dense labels.

Each scene is a few primitives standing on a checkered ground plane in front of a back
wall, seen by a pinhole camera and lit by one directional light (Lambertian, with ambient
light and cast shadows). Every pixel's ray is cast analytically against the ground, the
wall and each primitive in torch, over a batch of scenes at once, so all labels come from
the same geometry:

- ``image``  float32 [N, 3, S, S]: RGB in [0, 1] (not standardised): albedo × shading plus
  a little pixel noise. Colour correlates with the class (a base hue per class) but every
  object's colour is jittered, the wall takes a random colour per scene and shadows darken
  the ground, so colour alone does not give the segmentation.
- ``seg``    int64 [N, S, S]: 0 = background (ground and wall), 1 = sphere, 2 = box,
  3 = cylinder, 4 = cone, 5 = ellipsoid (only the first ``classes - 1`` kinds are used).
- ``depth``  float32 [N, 1, S, S]: z-depth along the optical axis, in scene units (about
  2.5–16). Every pixel hits a surface, so depth is positive everywhere (0 is never used).
- ``normal`` float32 [N, 3, S, S]: unit surface normals in the right-handed camera frame
  (x right, y up, z towards the camera; NYUv2-style values in [-1, 1]) from the same ray
  hits; every normal faces the viewing ray (n · ray < 0).
- ``edge``   float32 [N, 1, S, S] in {0, 1}: pixels with a 4-neighbour on another surface
  (an object against the background or another object): every segmentation boundary and
  every depth discontinuity (occlusion boundary); both sides of a boundary are marked.

Options: ``train`` (2000) and ``val`` (500) scenes, ``size`` S (64), ``classes`` (5,
counting the background; 2–6). The camera has a 50° field of view (``info["fov_degrees"]``)
with square pixels, so depth back-projects as X = u·tan(25°)·d, Y = −v·tan(25°)·d, Z = −d
for pixel centres u, v in (−1, 1) (v grows downwards). The split's scenes are a pure function of ``seed`` and the
split's name (train and val use different derived seeds); nothing is cached on disk.

This file holds the data set (options, scene sampling, rendering in chunks on threads);
the ray casting itself is :mod:`mtlc.data.shapes_render`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from mtlc.data import (
    TensorData,
    check_memory,
    check_options,
    check_range,
    check_split,
    derived_seed,
)
from mtlc.data.shapes_render import FOV_DEGREES, render_chunk

__all__ = ["CLASS_NAMES", "load", "render"]

CLASS_NAMES = ("background", "sphere", "box", "cylinder", "cone", "ellipsoid")

SCHEMA = {
    "train": (int, 2000),
    "val": (int, 500),
    "size": (int, 64),
    "classes": (int, 5),
}

_SLOTS = 4  # object slots per scene (each present with probability 0.85)
_CHUNK = 128  # scenes rendered at once

# Base albedo of each object class (row = class id); objects jitter around it.
_BASE_RGB = torch.tensor(
    [
        [0.50, 0.50, 0.50],
        [0.85, 0.25, 0.20],
        [0.25, 0.75, 0.30],
        [0.20, 0.35, 0.85],
        [0.90, 0.80, 0.20],
        [0.75, 0.30, 0.80],
    ]
)


def load(split: str, *, seed: int = 0, **options) -> TensorData:
    """Render the ``split`` of the ``shapes`` data set (see the module docstring)."""
    check_split(split)
    opts = check_options("shapes", options, SCHEMA)
    for key in ("train", "val"):
        check_range(key, opts[key], 1)
    check_range("size", opts["size"], 8, 512)
    check_range("classes", opts["classes"], 2, len(CLASS_NAMES))
    n, size = opts[split], opts["size"]
    # image, depth, normal, edge float32 (8 channels) and seg int64, per scene
    check_memory(split, f"{n} scenes of {size}×{size} pixels", n * size * size * (8 * 4 + 8))
    g = torch.Generator().manual_seed(derived_seed(seed, "shapes", split))
    tensors = render(opts[split], opts["size"], opts["classes"], generator=g)
    size = opts["size"]
    info = {
        "num_classes": {"seg": opts["classes"]},
        "inputs": {"image": [3, size, size]},
        "class_names": list(CLASS_NAMES[: opts["classes"]]),
        "fov_degrees": FOV_DEGREES,
    }
    return TensorData(tensors, info)


# --- scene sampling ----------------------------------------------------------------------


def _uniform(g: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _sample_scenes(n: int, classes: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    k = _SLOTS
    cam_h = _uniform(g, n, 2.4, 3.2)
    pitch = torch.deg2rad(_uniform(g, n, 24.0, 34.0))
    yaw = torch.deg2rad(_uniform(g, n, -8.0, 8.0))
    cam_x = _uniform(g, n, -0.3, 0.3)
    elev = torch.deg2rad(_uniform(g, n, 35.0, 70.0))
    azim = torch.deg2rad(_uniform(g, n, -120.0, 120.0))
    light = torch.stack(
        [elev.cos() * azim.sin(), elev.sin(), -elev.cos() * azim.cos()], dim=-1
    )  # unit vector towards the light

    # Objects on a jittered 3x3 grid of ground cells (distinct cells, so they rarely touch).
    cells = torch.rand(n, 9, generator=g).argsort(dim=1)[:, :k]
    row, col = cells // 3, cells % 3 - 1
    oz = 4.2 + 1.8 * row.float() + _uniform(g, (n, k), -0.1, 0.1)
    ox = col.float() * 0.4 * oz + _uniform(g, (n, k), -0.1, 0.1)
    present = torch.rand(n, k, generator=g) < 0.85
    present[:, 0] = True
    cls = torch.randint(1, classes, (n, k), generator=g)
    r = _uniform(g, (n, k), 0.45, 0.7)
    u1, u2 = _uniform(g, (n, k), 0.0, 1.0), _uniform(g, (n, k), 0.0, 1.0)
    obj_yaw = _uniform(g, (n, k), 0.0, math.pi)
    sx, sy, sz = r.clone(), r.clone(), r.clone()  # sphere
    box, cyl, cone, ell = cls == 2, cls == 3, cls == 4, cls == 5
    sx = torch.where(box, r * (0.6 + 0.2 * u1), sx)
    sz = torch.where(box, r * (0.6 + 0.2 * u2), sz)
    sy = torch.where(box, r * (1.0 + 1.2 * u1), sy)
    sx = torch.where(cyl, r * 0.8, sx)
    sz = torch.where(cyl, r * 0.8, sz)
    sy = torch.where(cyl, r * (1.5 + 1.3 * u2), sy)
    sy = torch.where(cone, r * (1.8 + 1.2 * u1), sy)
    sx = torch.where(ell, r * 1.2, sx)
    sz = torch.where(ell, r * 0.7, sz)
    sy = torch.where(ell, r * 0.55, sy)
    scale = torch.stack([sx, sy, sz], dim=-1)

    albedo = _BASE_RGB[cls] + 0.12 * torch.randn(n, k, 3, generator=g)
    albedo = (albedo * _uniform(g, (n, k, 1), 0.75, 1.1)).clamp(0.05, 1.0)
    ground = 0.45 + 0.1 * torch.randn(n, 1, generator=g) + 0.06 * torch.randn(n, 3, generator=g)
    wall = _uniform(g, (n, 3), 0.3, 0.85)
    checker = _uniform(g, n, 0.7, 1.6)  # checker square size on the ground
    return {
        "cam_h": cam_h,
        "pitch": pitch,
        "yaw": yaw,
        "cam_x": cam_x,
        "light": light,
        "centre": torch.stack([ox, torch.zeros_like(ox), oz], dim=-1),
        "obj_yaw": obj_yaw,
        "scale": scale,
        "cls": cls,
        "present": present,
        "albedo": albedo,
        "ground": ground.clamp(0.1, 0.9),
        "wall": wall,
        "checker": checker,
    }


def render(
    n: int, size: int = 64, classes: int = 5, *, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Render ``n`` random scenes at ``size``×``size``; see the module docstring.

    Chunks of scenes are rendered by a small pool of Python threads, each running torch
    ops single-threaded (torch releases the GIL inside ops). On a busy machine this is
    far faster than torch's own intra-op threads, whose barriers stall when a core is
    taken. The result depends only on ``generator``, not on the number of threads.
    """
    scenes = _sample_scenes(n, classes, generator)
    starts = list(range(0, n, _CHUNK))
    seeds = torch.randint(0, 2**62, (len(starts),), generator=generator).tolist()
    out = {
        "image": torch.empty(n, 3, size, size),
        "seg": torch.empty(n, size, size, dtype=torch.int64),
        "depth": torch.empty(n, 1, size, size),
        "normal": torch.empty(n, 3, size, size),
        "edge": torch.empty(n, 1, size, size),
    }

    def work(i: int) -> None:
        lo = starts[i]
        chunk = {k: v[lo : lo + _CHUNK] for k, v in scenes.items()}
        g = torch.Generator().manual_seed(seeds[i])
        with torch.no_grad():
            for key, value in render_chunk(chunk, size, g).items():
                out[key][lo : lo + _CHUNK] = value

    workers = max(1, min(torch.get_num_threads(), len(starts), os.cpu_count() or 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1:
            for i in range(len(starts)):
                work(i)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, range(len(starts))))
    finally:
        torch.set_num_threads(threads)
    return out
