"""Primitives, area-uniform sampling, farthest-point sampling and the procedural categories."""

from __future__ import annotations

import numpy as np
import pytest

from data3d.primitives import box, cylinder, ellipsoid, face_areas, farthest_point_sample, lathe, merge, sample_surface
from data3d.shapes import CATEGORIES, COLOUR_NAMES, NUMBER_WORDS, PALETTE, build_shape


def test_box_area_and_closed_volume():
    mesh = box((1.0, 2.0, 4.0), centre=(1.0, 0.0, 0.0))
    assert face_areas(mesh.vertices, mesh.faces).sum() == pytest.approx(2 * (2 + 4 + 8))
    assert np.allclose(mesh.vertices.min(axis=0), [0.5, -1.0, -2.0])
    assert np.allclose(mesh.vertices.max(axis=0), [1.5, 1.0, 2.0])


def test_lathe_and_ellipsoid_approximate_their_surfaces():
    sphere = ellipsoid((1.0, 1.0, 1.0), rings=32, segments=64)
    assert face_areas(sphere.vertices, sphere.faces).sum() == pytest.approx(4 * np.pi, rel=0.01)
    tube = cylinder(0.5, 2.0, segments=128)
    assert face_areas(tube.vertices, tube.faces).sum() == pytest.approx(
        2 * np.pi * 0.5 * 2.0 + 2 * np.pi * 0.25, rel=0.01
    )
    open_tube = lathe([(1.0, 0.0), (1.0, 1.0)], segments=256)
    assert face_areas(open_tube.vertices, open_tube.faces).sum() == pytest.approx(2 * np.pi, rel=0.01)


def test_sample_surface_is_uniform_by_area():
    size = np.array([1.0, 2.0, 4.0])
    mesh = box(size)
    points, normals, _ = sample_surface(mesh.vertices, mesh.faces, 60000, np.random.default_rng(0))
    on_face_of_axis = np.isclose(np.abs(points), size / 2, atol=1e-9)
    assert on_face_of_axis.any(axis=1).all()
    fraction = on_face_of_axis.mean(axis=0)
    face_area = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]])
    assert np.allclose(fraction, face_area / face_area.sum(), atol=0.01)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    assert np.allclose(np.abs(normals[on_face_of_axis[:, 0]]), [1, 0, 0])


def test_sample_surface_rejects_a_mesh_without_area():
    flat = merge([box((1.0, 1.0, 1.0))])
    flat.vertices[:] = 0.0
    with pytest.raises(ValueError, match="no surface area"):
        sample_surface(flat.vertices, flat.faces, 10, np.random.default_rng(0))


def test_farthest_point_sample_is_greedy_farthest():
    xyz = np.random.default_rng(1).normal(size=(200, 3))
    chosen = farthest_point_sample(xyz, 20, start=7)
    assert chosen[0] == 7 and len(set(chosen.tolist())) == 20
    for j in range(1, 20):
        to_chosen = np.linalg.norm(xyz[:, None] - xyz[chosen[:j]][None], axis=-1).min(axis=1)
        assert to_chosen[chosen[j]] == pytest.approx(to_chosen.max())
    assert np.array_equal(chosen, farthest_point_sample(xyz, 20, start=7))
    with pytest.raises(ValueError, match="k <= 200"):
        farthest_point_sample(xyz, 201)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_every_category_builds_varied_coloured_shapes(category):
    shapes = [build_shape(category, np.random.default_rng([3, i])) for i in range(4)]
    for shape in shapes:
        mesh = shape.mesh
        assert shape.category == category and mesh.faces.max() < len(mesh.vertices)
        assert np.isfinite(mesh.vertices).all() and ((shape.face_rgb >= 0) & (shape.face_rgb <= 1)).all()
        area = np.bincount(mesh.labels, weights=face_areas(mesh.vertices, mesh.faces), minlength=len(PALETTE))
        assert shape.colour == COLOUR_NAMES[int(np.argmax(area))]
        assert shape.description.split()[:3] == [("an" if shape.colour[0] in "aeiou" else "a"), shape.colour, category]
        for noun, n in shape.counts.items():
            assert f"{NUMBER_WORDS[n]} " in shape.description and noun.split()[-1][:3] in shape.description
        extent = np.ptp(mesh.vertices, axis=0)
        assert extent.min() > 0.05 * extent.max()  # never degenerate: the normalized box keeps a real thickness
    assert len({round(float(np.ptp(s.mesh.vertices[:, 1])), 6) for s in shapes}) > 1  # proportions are random


def test_unknown_category_is_named():
    with pytest.raises(ValueError, match="'teapot'"):
        build_shape("teapot", np.random.default_rng(0))


def test_at_least_twelve_categories():
    assert len(CATEGORIES) >= 12
