"""Look-at cameras, the splatting z-buffer renderer, and the mask-based foreground targets."""

from __future__ import annotations

import numpy as np
import pytest

from data3d.primitives import box, ellipsoid, sample_surface
from data3d.render import close, dilate, erode, fit_camera, look_at, mask_box, mask_keypoints, orbit_eye, render
from data3d.types import Camera
from rewards.camera import project


def _sphere(count=40000, seed=0):
    mesh = ellipsoid((1.0, 1.0, 1.0), rings=24, segments=48)
    xyz, normals, _ = sample_surface(mesh.vertices, mesh.faces, count, np.random.default_rng(seed))
    return xyz, normals


@pytest.mark.parametrize("elevation,azimuth", [(0.0, 0.0), (30.0, 90.0), (-20.0, -135.0), (60.0, 10.0)])
def test_look_at_is_a_rotation_that_centres_the_target(elevation, azimuth):
    eye = orbit_eye(elevation, azimuth, 3.0)
    R, t = look_at(eye)
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    pixels, depth = project(np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), K, R, t)
    assert np.allclose(pixels[0], [64, 48]) and depth[0] == pytest.approx(3.0)
    assert pixels[1, 1] < 48  # world up is image up


def test_front_view_puts_plus_x_on_the_right():
    R, t = look_at(orbit_eye(0.0, 0.0, 3.0))
    pixels, _ = project(np.array([[0.5, 0.0, 0.0]]), np.eye(3), R, t)
    assert pixels[0, 0] > 0


def test_look_at_rejects_a_view_along_up():
    with pytest.raises(ValueError, match="parallel"):
        look_at((0.0, 3.0, 0.0))


def test_fit_camera_keeps_the_object_inside_at_the_requested_fill():
    xyz, _ = _sphere(5000)
    xyz = xyz * np.array([1.0, 0.4, 0.7])
    camera = fit_camera(xyz, orbit_eye(25.0, 40.0, 3.0), 0.8, 160, 120)
    pixels, depth = project(xyz, camera.K, camera.R, camera.t)
    assert (depth > 0).all()
    offset = np.abs(pixels - [80, 60]) / [80, 60]
    assert offset.max() == pytest.approx(0.8)
    assert camera.K[0, 2] == 80 and camera.K[1, 2] == 60


def test_render_sphere_silhouette_matches_its_projection():
    xyz, normals = _sphere()
    distance, focal = 3.0, 150.0
    R, t = look_at(orbit_eye(20.0, 30.0, distance))
    camera = Camera(K=np.array([[focal, 0, 64], [0, focal, 64], [0, 0, 1.0]]), R=R, t=t, width=128, height=128)
    image, mask = render(xyz, np.full_like(xyz, 0.5), normals, camera)
    radius = focal / np.sqrt(distance**2 - 1)  # a unit sphere's silhouette radius in pixels
    assert mask.sum() == pytest.approx(np.pi * radius**2, rel=0.04)
    assert np.array_equal(close(mask, 2), mask)  # solid: a wider closing finds no hole left to fill
    assert (image[~mask] == 250).all() and (image[mask] < 250).all()
    assert image[mask].std() > 5  # Lambert shading varies over the sphere


def test_render_near_surface_hides_far_one_in_any_sample_order():
    rng = np.random.default_rng(0)
    near_square, far_square = box((1.0, 1.0, 0.01), (0, 0, 0.5)), box((2.0, 2.0, 0.01), (0, 0, -0.5))
    near = sample_surface(near_square.vertices, near_square.faces, 20000, rng)[0]
    far = sample_surface(far_square.vertices, far_square.faces, 40000, rng)[0]
    xyz = np.concatenate([near, far])
    rgb = np.concatenate([np.tile([1.0, 0, 0], (len(near), 1)), np.tile([0, 0, 1.0], (len(far), 1))])
    R, t = look_at(orbit_eye(0.0, 0.0, 4.0))
    camera = Camera(K=np.array([[120.0, 0, 64], [0, 120.0, 64], [0, 0, 1]]), R=R, t=t, width=128, height=128)
    image, mask = render(xyz, rgb, None, camera)
    centre = image[50:78, 50:78].reshape(-1, 3)
    assert (centre[:, 0] > 0).all() and (centre[:, 2] == 0).all()  # the red square in front, never blue
    reversed_image, reversed_mask = render(xyz[::-1], rgb[::-1], None, camera)
    assert np.array_equal(image, reversed_image) and np.array_equal(mask, reversed_mask)


def test_render_rejects_points_behind_the_camera():
    R, t = look_at(orbit_eye(0.0, 0.0, 3.0))
    camera = Camera(K=np.eye(3), R=R, t=t, width=8, height=8)
    with pytest.raises(ValueError, match="behind the camera"):
        render(np.array([[0.0, 0.0, 5.0]]), np.ones((1, 3)), None, camera)


def test_morphology():
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    mask[4, 4] = False
    assert close(mask, 1)[4, 4] and close(mask, 1).sum() == 25
    assert erode(close(mask, 1), 1).sum() == 9 and dilate(mask, 1).sum() == 49
    edge = np.ones((4, 4), dtype=bool)
    assert not erode(edge, 1)[0].any()  # outside the image counts as background


def test_mask_box_is_exclusive_and_keypoints_lie_inside():
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:20, 5:30] = True
    mask[20:35, 12:18] = True
    box2d = mask_box(mask)
    assert box2d.tolist() == [5, 10, 30, 35]
    kpts = mask_keypoints(mask, 16)
    assert kpts.shape == (16, 2) and len({tuple(k) for k in kpts.tolist()}) == 16
    inner = erode(mask, 1)
    assert inner[(kpts[:, 1] - 0.5).astype(int), (kpts[:, 0] - 0.5).astype(int)].all()
    assert ((kpts >= box2d[:2] + 1.5) & (kpts <= box2d[2:] - 1.5)).all()
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((4, 4), dtype=bool))
