"""Triangle-mesh primitives for the procedural shapes, area-uniform surface sampling and farthest-point sampling.

A `Mesh` is plain arrays: vertices (V, 3), faces (F, 3) and one integer label per face (the shape builders use it
as the colour slot of the part). Every primitive is built around the y axis (y is up) and then moved with `placed`.
Face winding is not kept consistent: the renderer lights both sides of a surface, so it never needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    labels: np.ndarray  # (F,) int64


def box(size, centre=(0.0, 0.0, 0.0), label: int = 0) -> Mesh:
    """Axis-aligned box with edge lengths `size` centred at `centre`."""
    corners = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=np.float64) - 0.5
    vertices = corners * np.asarray(size, dtype=np.float64) + np.asarray(centre, dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))], dtype=np.int64)
    return Mesh(vertices, faces, np.full(len(faces), label, dtype=np.int64))


def grid_surface(grid: np.ndarray, label: int = 0, wrap_v: bool = True) -> Mesh:
    """Triangulate a (nu, nv, 3) grid of points; `wrap_v` joins the last column back to the first (a closed loop)."""
    nu, nv, _ = grid.shape
    index = np.arange(nu * nv).reshape(nu, nv)
    right = np.roll(index, -1, axis=1) if wrap_v else index[:, 1:]
    left = index if wrap_v else index[:, :-1]
    a, b, c, d = left[:-1], right[:-1], right[1:], left[1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    labels = np.full(len(faces), label, dtype=np.int64)
    return Mesh(grid.reshape(-1, 3).astype(np.float64), faces.astype(np.int64), labels)


def lathe(profile, segments: int = 16, label: int = 0) -> Mesh:
    """Surface of revolution about the y axis of a (K, 2) profile of (radius, y); radius 0 at an end closes it."""
    profile = np.asarray(profile, dtype=np.float64)
    angle = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    radius, height = profile[:, :1], np.broadcast_to(profile[:, 1:], (len(profile), segments))
    grid = np.stack([radius * np.cos(angle), height, radius * np.sin(angle)], -1)
    return grid_surface(grid, label)


def cylinder(radius: float, height: float, label: int = 0, top_radius: float | None = None, segments: int = 16) -> Mesh:
    """Closed cylinder (or frustum when `top_radius` differs) standing on y = 0."""
    top = radius if top_radius is None else top_radius
    return lathe([(0.0, 0.0), (radius, 0.0), (top, height), (0.0, height)], segments, label)


def ellipsoid(radii, label: int = 0, rings: int = 8, segments: int = 16) -> Mesh:
    """Ellipsoid with semi-axes `radii` (x, y, z) centred at the origin."""
    theta = np.linspace(-np.pi / 2, np.pi / 2, rings + 1)
    unit = lathe(np.stack([np.cos(theta), np.sin(theta)], -1), segments, label)
    unit.vertices = unit.vertices * np.asarray(radii, dtype=np.float64)
    return unit


def torus_arc(major: float, minor: float, arc: float, label: int = 0, steps: int = 10, segments: int = 8) -> Mesh:
    """Part of a torus in the x-y plane around the origin: the tube sweeps angles [-arc/2, arc/2] from +x."""
    u = np.linspace(-arc / 2, arc / 2, steps)[:, None]
    v = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)[None, :]
    ring = major + minor * np.cos(v)
    grid = np.stack([ring * np.cos(u), ring * np.sin(u), np.broadcast_to(minor * np.sin(v), (steps, segments))], -1)
    return grid_surface(grid, label)


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) rotation about a coordinate axis ("x", "y" or "z"), right-handed."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def placed(mesh: Mesh, offset=(0.0, 0.0, 0.0), rot: np.ndarray | None = None) -> Mesh:
    """The mesh rotated by `rot` (about the origin) and then moved by `offset`."""
    vertices = mesh.vertices if rot is None else mesh.vertices @ rot.T
    return Mesh(vertices + np.asarray(offset, dtype=np.float64), mesh.faces, mesh.labels)


def merge(meshes: list[Mesh]) -> Mesh:
    """One mesh holding all parts (face indices shifted)."""
    starts = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return Mesh(
        np.concatenate([m.vertices for m in meshes]),
        np.concatenate([m.faces + s for m, s in zip(meshes, starts)]),
        np.concatenate([m.labels for m in meshes]),
    )


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator):
    """`count` points uniform by area on a triangle mesh -> (points (count, 3), unit normals (count, 3), face index)."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    edge1, edge2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    cross = np.cross(edge1, edge2)
    double_area = np.linalg.norm(cross, axis=1)
    cdf = np.cumsum(double_area)
    if len(faces) == 0 or not cdf[-1] > 0:
        raise ValueError(f"mesh with {len(vertices)} vertices and {len(faces)} faces has no surface area to sample")
    face = np.minimum(np.searchsorted(cdf, rng.random(count) * cdf[-1], side="right"), len(faces) - 1)
    u, v = rng.random((2, count))
    outside = u + v > 1.0  # reflect into the triangle so (u, v) stays uniform
    u[outside], v[outside] = 1.0 - u[outside], 1.0 - v[outside]
    points = tri[face, 0] + u[:, None] * edge1[face] + v[:, None] * edge2[face]
    normals = cross[face] / np.maximum(double_area[face], 1e-300)[:, None]
    return points, normals, face


def farthest_point_sample(xyz: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of `k` points chosen greedily farthest from those already chosen, beginning at index `start`."""
    n = len(xyz)
    if not 0 < k <= n:
        raise ValueError(f"farthest_point_sample: need 0 < k <= {n} points, got k={k}")
    x, y, z = (np.ascontiguousarray(xyz[:, i], dtype=np.float64) for i in range(3))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = start
    nearest = np.full(n, np.inf)
    for j in range(1, k):
        c = chosen[j - 1]
        np.minimum(nearest, (x - x[c]) ** 2 + (y - y[c]) ** 2 + (z - z[c]) ** 2, out=nearest)
        chosen[j] = np.argmax(nearest)
    return chosen
