"""The ray caster behind the ``shapes`` data set: sampled scene parameters → image and labels.

Given a batch of scenes (camera, light, primitives and colours, as
the ``shapes`` data set's scene sampler draws them), every pixel's ray is cast
analytically in torch against the ground plane, the back wall and each primitive, and
the first hit gives all five labels from the same geometry: colour (Lambertian shading
with ambient light and a shadow ray towards the light), class, z-depth, the surface
normal in the camera frame and the occlusion edges. It is kept apart from the data set
(:mod:`mtlc.data.shapes`: options, scene sampling, chunking) because it is geometry, not
data loading; it is no data set itself and the registry does not name it.
"""

from __future__ import annotations

import math

import torch

_WALL_Z = 14.0  # the back wall is the plane z = _WALL_Z
FOV_DEGREES = 50.0
_FOV = math.radians(FOV_DEGREES)
_AMBIENT = 0.3

# Geometry by class id. Every object lives in a local frame (rotated about the vertical,
# scaled per axis, base on the ground at y = 0). All but the box are the quadric
# A(x² + z²) + B y² + C y + D = 0 clipped to 0 <= y <= ymax (the ellipsoid is the sphere
# with unequal scales); the box is [-1, 1] x [0, 1] x [-1, 1] by the slab test.
_QUADRIC = {
    1: (1.0, 1.0, -2.0, 0.0, 2.0),  # sphere: x² + (y-1)² + z² = 1
    2: (0.0, 0.0, 0.0, 1.0, 0.0),  # box (slabs; quadric unused, never satisfied)
    3: (1.0, 0.0, 0.0, -1.0, 1.0),  # cylinder: x² + z² = 1, top cap at y = 1
    4: (1.0, -1.0, 2.0, -1.0, 1.0),  # cone: x² + z² = (1 - y)²
    5: (1.0, 1.0, -2.0, 0.0, 2.0),  # ellipsoid
}

_COEF = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]] + [list(_QUADRIC[i]) for i in range(1, 6)])


def _object_params(sc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per object, packed for one gather: [n, K, 8] = (x, z, sx, sy, sz, cos, sin, class).

    An object's local frame is its base centre (x, 0, z), rotated by its yaw about the
    vertical and scaled by (sx, sy, sz): local = R(world − centre) / scale with
    R = [[cos, 0, −sin], [0, 1, 0], [sin, 0, cos]].
    """
    yaw = sc["obj_yaw"]
    x, _, z = sc["centre"].unbind(-1)
    sx, sy, sz = sc["scale"].unbind(-1)
    return torch.stack([x, z, sx, sy, sz, yaw.cos(), yaw.sin(), sc["cls"].float()], dim=-1)


def _to_local(o: torch.Tensor, d: torch.Tensor | None, prm: torch.Tensor):
    """World points o (and directions d) [..., 3] into the frames of objects prm [..., 8]."""
    cx, cz, sx, sy, sz, c, s, _ = prm.unbind(-1)
    rx, ry, rz = o[..., 0] - cx, o[..., 1], o[..., 2] - cz
    lo = ((c * rx - s * rz) / sx, ry / sy, (s * rx + c * rz) / sz)
    if d is None:
        return lo, None
    dx, dy, dz = d.unbind(-1)
    return lo, ((c * dx - s * dz) / sx, dy / sy, (s * dx + c * dz) / sz)


def _bounds(sc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A bounding sphere per object: centre [n, K, 3] and radius [n, K] (0 if absent)."""
    sx, sy, sz = sc["scale"].unbind(-1)
    cls = sc["cls"]
    height = torch.where((cls == 1) | (cls == 5), 2.0 * sy, sy)
    half_w = torch.maximum(sx, sz) * torch.where(cls == 2, math.sqrt(2.0), 1.0)
    centre = sc["centre"].clone()
    centre[..., 1] = height / 2
    radius = (half_w.square() + (height / 2).square()).sqrt() * 1.01 + 1e-3
    return centre, torch.where(sc["present"], radius, torch.zeros_like(radius))


def _candidates_primary(origin, dirs, bc, br) -> torch.Tensor:
    """[n, P, K]: rays from the camera whose cone can meet the object's bounding sphere."""
    w = bc - origin  # [n, K, 3]
    dist = w.norm(dim=-1)
    cos_lim = (1.0 - (br / dist.clamp_min(1e-6)).clamp(max=1.0).square()).sqrt()
    cos = torch.bmm(torch.nn.functional.normalize(dirs, dim=-1), (w / dist.unsqueeze(-1)).mT)
    return (cos >= cos_lim.unsqueeze(1)) & (br > 0).unsqueeze(1)


def _candidates_shadow(points, light, bc, br) -> torch.Tensor:
    """[n, P, K]: rays point + s·light (s > 0) that can meet the bounding sphere."""
    cq = torch.bmm(points, bc.mT)  # c·q, [n, P, K]
    s = (bc * light).sum(-1).unsqueeze(1) - (points * light).sum(-1, keepdim=True)
    v2 = bc.square().sum(-1).unsqueeze(1) - 2.0 * cq + points.square().sum(-1, keepdim=True)
    r2 = br.square().unsqueeze(1)
    return (v2 - s.square() < r2) & (s > -br.unsqueeze(1)) & (br > 0).unsqueeze(1)


def _intersect(o, d, prm, eps: float = 1e-4) -> torch.Tensor:
    """Ray parameter t of the first hit of rays o + t·d [M, 3] with objects prm [M, 8]."""
    (ox, oy, oz), (dx, dy, dz) = _to_local(o, d, prm)
    cls = prm[:, 7].long()
    qa, qb, qc, qd, ymax = _COEF[cls].unbind(-1)
    inf = torch.full_like(ox, math.inf)

    # Quadric A(x²+z²) + B y² + C y + D = 0 along o + t d, clipped to 0 <= y <= ymax.
    a = qa * (dx * dx + dz * dz) + qb * dy * dy
    b = 2.0 * (qa * (ox * dx + oz * dz) + qb * oy * dy) + qc * dy
    c = qa * (ox * ox + oz * oz) + qb * oy * oy + qc * oy + qd
    a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
    disc = b * b - 4.0 * a * c
    sq = disc.clamp_min(0.0).sqrt()
    t1, t2 = (-b - sq) / (2.0 * a), (-b + sq) / (2.0 * a)
    tlo, thi = torch.minimum(t1, t2), torch.maximum(t1, t2)
    ylo, yhi = oy + tlo * dy, oy + thi * dy
    ok_lo = (disc >= 0) & (tlo > eps) & (ylo >= 0) & (ylo <= ymax)
    ok_hi = (disc >= 0) & (thi > eps) & (yhi >= 0) & (yhi <= ymax)
    t_quad = torch.where(ok_lo, tlo, torch.where(ok_hi, thi, inf))

    # Top cap of the cylinder: the disc x² + z² <= 1 at y = 1.
    dy_safe = torch.where(dy.abs() < 1e-12, torch.full_like(dy, 1e-12), dy)
    t_cap = (1.0 - oy) / dy_safe
    cx, cz = ox + t_cap * dx, oz + t_cap * dz
    ok_cap = (cls == 3) & (t_cap > eps) & (cx * cx + cz * cz <= 1.0)
    t_quad = torch.minimum(t_quad, torch.where(ok_cap, t_cap, inf))

    # Box: the slab test for [-1, 1] x [0, 1] x [-1, 1].
    def slab(o_, d_, lo_, hi_):
        d_ = torch.where(d_.abs() < 1e-12, torch.full_like(d_, 1e-12), d_)
        ta, tb = (lo_ - o_) / d_, (hi_ - o_) / d_
        return torch.minimum(ta, tb), torch.maximum(ta, tb)

    xa, xb = slab(ox, dx, -1.0, 1.0)
    ya, yb = slab(oy, dy, 0.0, 1.0)
    za, zb = slab(oz, dz, -1.0, 1.0)
    near = torch.maximum(torch.maximum(xa, ya), za)
    far = torch.minimum(torch.minimum(xb, yb), zb)
    t_box = torch.where((near <= far) & (near > eps), near, inf)
    return torch.where(cls == 2, t_box, t_quad)


def _cast(origin, dirs, params, candidates) -> torch.Tensor:
    """Hit distance t [n, P, K] of every candidate (ray, object) pair; inf elsewhere."""
    si, pi, ki = candidates.nonzero(as_tuple=True)
    o = origin[si, pi if origin.shape[1] > 1 else torch.zeros_like(pi)]
    d = dirs[si, pi if dirs.shape[1] > 1 else torch.zeros_like(pi)]
    t = torch.full(candidates.shape, math.inf)
    t[si, pi, ki] = _intersect(o, d, params[si, ki])
    return t


def _normals(point, k_min, hit_obj, on_ground, params) -> torch.Tensor:
    """World-frame unit normals [n, P, 3] at the visible surface points."""
    prm = params.gather(1, k_min.unsqueeze(-1).expand(-1, -1, params.shape[-1]))  # [n, P, 8]
    (px, py, pz), _ = _to_local(point, None, prm)
    cls = prm[..., 7].long()
    qa, qb, qc, _, _ = _COEF[cls].unbind(-1)
    gx, gy, gz = 2 * qa * px, 2 * qb * py + qc, 2 * qa * pz  # quadric gradient
    # A cylinder point nearer its top plane than its side lies on the cap.
    on_cap = (cls == 3) & ((py - 1).abs() < ((px * px + pz * pz).sqrt() - 1).abs())
    # Box: the face nearest to the hit point (the bottom face is never seen).
    fx, fy, fz = 1 - px.abs(), 1 - py, 1 - pz.abs()
    box = cls == 2
    bx = box & (fx <= fy) & (fx <= fz)
    bz = box & ~bx & (fz <= fy)
    by = box & ~bx & ~bz
    zero = torch.zeros_like(px)
    gx = torch.where(bx, px.sign(), torch.where(box | on_cap, zero, gx))
    gy = torch.where(by | on_cap, zero + 1.0, torch.where(box, zero, gy))
    gz = torch.where(bz, pz.sign(), torch.where(box | on_cap, zero, gz))
    # Gradients transform with the inverse transpose of local = R(world − c) / s.
    _, _, sx, sy, sz, c, s, _ = prm.unbind(-1)
    gx, gy, gz = gx / sx, gy / sy, gz / sz
    n_obj = torch.stack([c * gx + s * gz, gy, c * gz - s * gx], dim=-1)
    n_bg = torch.stack([zero, on_ground.float(), -(~on_ground).float()], dim=-1)
    normal = torch.where(hit_obj.unsqueeze(-1), n_obj, n_bg)
    return torch.nn.functional.normalize(normal, dim=-1)


def _camera(sc: dict[str, torch.Tensor], size: int):
    """Camera origin [n,1,3], ray directions [n,P,3] (forward component 1) and basis."""
    n = sc["cam_h"].shape[0]
    p, yw = sc["pitch"], sc["yaw"]
    fwd = torch.stack([p.cos() * yw.sin(), -p.sin(), p.cos() * yw.cos()], -1)
    # right = fwd × world-up (normalised) and up = right × fwd: (right, up, -fwd) is a
    # right-handed frame, the camera frame in which normals are reported.
    right = torch.stack([-yw.cos(), torch.zeros_like(yw), yw.sin()], -1)
    up = torch.cross(right, fwd, dim=-1)
    tan = math.tan(_FOV / 2)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: rows (down), u: columns
    u, v = u.reshape(1, -1, 1) * tan, v.reshape(1, -1, 1) * tan
    dirs = fwd.unsqueeze(1) + u * right.unsqueeze(1) - v * up.unsqueeze(1)
    origin = torch.stack([sc["cam_x"], sc["cam_h"], torch.zeros(n)], -1).unsqueeze(1)
    return origin, dirs, (right, up, fwd)


def render_chunk(
    sc: dict[str, torch.Tensor], size: int, g: torch.Generator
) -> dict[str, torch.Tensor]:
    """Ray-cast one chunk of sampled scenes (``sc``) at ``size``×``size``: the image and
    its per-pixel targets, keyed as the data set's tensors."""
    n = sc["cam_h"].shape[0]
    origin, dirs, (right, up, fwd) = _camera(sc, size)
    params = _object_params(sc)

    # Background: the ground y = 0 in front of the wall z = _WALL_Z, else the wall.
    t_ground = -origin[..., 1] / dirs[..., 1].clamp(max=-1e-9)
    gz = origin[..., 2] + t_ground * dirs[..., 2]
    on_ground = (dirs[..., 1] < 0) & (gz < _WALL_Z)
    t_wall = (_WALL_Z - origin[..., 2]) / dirs[..., 2]
    t_bg = torch.where(on_ground, t_ground, t_wall)

    bc, br = _bounds(sc)
    t_obj = _cast(origin, dirs, params, _candidates_primary(origin, dirs, bc, br))
    t_min, k_min = t_obj.min(dim=-1)  # [n, P]
    hit_obj = t_min < t_bg
    depth = torch.where(hit_obj, t_min, t_bg)  # = z-depth since dirs · fwd = 1
    point = origin + depth.unsqueeze(-1) * dirs
    cls_k = sc["cls"].gather(1, k_min)
    normal = _normals(point, k_min, hit_obj, on_ground, params)
    facing = (normal * dirs).sum(-1, keepdim=True)
    normal = torch.where(facing > 0, -normal, normal)

    # Labels.
    seg = torch.where(hit_obj, cls_k, torch.zeros_like(cls_k))
    inst = torch.where(hit_obj, k_min + 1, torch.zeros_like(k_min)).view(n, size, size)
    edge = torch.zeros(n, size, size, dtype=torch.bool)
    dh = inst[:, :, 1:] != inst[:, :, :-1]
    dv = inst[:, 1:, :] != inst[:, :-1, :]
    edge[:, :, 1:] |= dh
    edge[:, :, :-1] |= dh
    edge[:, 1:, :] |= dv
    edge[:, :-1, :] |= dv

    # Shading: Lambert with ambient light and cast shadows from the objects.
    light = sc["light"].unsqueeze(1)  # [n,1,3]
    lambert = (normal * light).sum(-1).clamp_min(0.0)
    start = point + 2e-3 * normal
    cand = _candidates_shadow(start, light, bc, br) & (lambert > 0).unsqueeze(-1)
    lit = _cast(start, light, params, cand).min(-1).values == math.inf
    shade = _AMBIENT + (1.0 - _AMBIENT) * lambert * lit.float()
    albedo_obj = sc["albedo"].gather(1, k_min.unsqueeze(-1).expand(-1, -1, 3))
    sq = sc["checker"].unsqueeze(1)
    check = ((point[..., 0] / sq).floor() + (point[..., 2] / sq).floor()).remainder(2.0)
    albedo_ground = sc["ground"].unsqueeze(1) * (0.85 + 0.3 * check).unsqueeze(-1)
    albedo_bg = torch.where(on_ground.unsqueeze(-1), albedo_ground, sc["wall"].unsqueeze(1))
    albedo = torch.where(hit_obj.unsqueeze(-1), albedo_obj, albedo_bg)
    image = albedo * shade.unsqueeze(-1) + 0.02 * torch.randn(albedo.shape, generator=g)
    image = image.clamp(0.0, 1.0)

    # World normals -> camera frame (x right, y up, z towards the camera).
    basis = torch.stack([right, up, -fwd], dim=1)  # [n,3,3]
    normal_cam = torch.einsum("nij,npj->npi", basis, normal)

    def img(x, c):
        return x.reshape(n, size, size, c).permute(0, 3, 1, 2).contiguous()

    return {
        "image": img(image, 3),
        "seg": seg.view(n, size, size),
        "depth": img(depth.unsqueeze(-1), 1),
        "normal": img(normal_cam, 3),
        "edge": edge.unsqueeze(1).float(),
    }
