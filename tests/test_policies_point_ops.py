"""point_ops against brute-force references: FPS determinism, kNN, grouping and the SPA corruptions."""

import numpy as np
import pytest
import torch

from policies.point_ops import (
    drop_points,
    farthest_point_sample,
    gaussian_noise,
    group_points,
    knn,
    mask_groups,
)


def reference_fps(xyz: np.ndarray, k: int, start: int = 0) -> list[int]:
    """The textbook loop in float64 numpy: take the point farthest from everything taken so far."""
    chosen = [start]
    nearest = np.full(len(xyz), np.inf)
    for _ in range(k - 1):
        nearest = np.minimum(nearest, ((xyz - xyz[chosen[-1]]) ** 2).sum(-1))
        chosen.append(int(np.argmax(nearest)))
    return chosen


def cloud(batch=2, n=200, channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, channels, generator=g) * 2 - 1


def test_fps_matches_reference_and_is_deterministic():
    points = cloud()
    idx = farthest_point_sample(points, 16)
    assert idx.shape == (2, 16)
    for b in range(2):
        assert idx[b].tolist() == reference_fps(points[b, :, :3].double().numpy(), 16)
    assert torch.equal(idx, farthest_point_sample(points.clone(), 16))


def test_fps_does_not_depend_on_batch_neighbours():
    points = cloud(batch=4)
    together = farthest_point_sample(points, 24)
    for b in range(4):
        assert torch.equal(farthest_point_sample(points[b : b + 1], 24)[0], together[b])


def test_fps_start_index_and_ties_go_to_lowest_index():
    # points 1 and 2 are equally far from point 0; 3 and 4 are duplicates of 1 and 2
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [1, 0, 0], [-1, 0, 0]]])
    assert farthest_point_sample(xyz, 2).tolist() == [[0, 1]]
    assert farthest_point_sample(xyz, 3, start=2).tolist() == [[2, 1, 0]]


def test_fps_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k=300"):
        farthest_point_sample(cloud(), 300)
    with pytest.raises(ValueError, match=r"\(B, N, C>=3\)"):
        farthest_point_sample(torch.zeros(10, 3), 2)


def test_knn_matches_brute_force():
    points = cloud(n=120)
    query = points[:, :10]
    idx = knn(query, points, 7)
    d = ((query[:, :, None, :3] - points[:, None, :, :3]) ** 2).sum(-1).double().numpy()
    expected = np.argsort(d, axis=-1, kind="stable")[..., :7]
    assert idx.tolist() == expected.tolist()
    assert (idx[..., 0] == torch.arange(10)).all()  # each query point is its own nearest neighbour


def test_group_points_centres_xyz_and_keeps_colour():
    points = cloud()
    centers_idx = farthest_point_sample(points, 8)
    groups, centers = group_points(points, centers_idx, 5)
    assert groups.shape == (2, 8, 5, 6) and centers.shape == (2, 8, 3)
    members = knn(centers, points, 5)
    for b in range(2):
        original = points[b][members[b]]  # (8, 5, 6)
        assert torch.allclose(groups[b, ..., :3] + centers[b, :, None], original[..., :3], atol=1e-6)
        assert torch.equal(groups[b, ..., 3:], original[..., 3:])
        assert torch.equal(centers[b], points[b, centers_idx[b], :3])


def rows_as_set(x: torch.Tensor) -> set[tuple]:
    return {tuple(r) for r in x.tolist()}


def test_mask_groups_removes_whole_groups_of_the_nearest_fps_centre():
    points = cloud(n=256)
    out = mask_groups(points, 0.5, num_groups=16, generator=torch.Generator().manual_seed(1))
    assert out.shape == points.shape
    for b in range(2):
        survivors = rows_as_set(out[b])
        originals = [tuple(r) for r in points[b].tolist()]
        assert survivors <= set(originals)  # only original points, nothing invented
        xyz = points[b, :, :3].double().numpy()
        centres = xyz[reference_fps(xyz, 16)]
        owner = ((xyz[:, None] - centres[None]) ** 2).sum(-1).argmin(1)  # every point in its nearest centre's group
        groups = [{originals[i] for i in np.flatnonzero(owner == g)} for g in range(16)]
        removed = [g for g in groups if not g & survivors]
        assert all(g <= survivors for g in groups if g & survivors)  # a group goes whole or not at all
        assert survivors == set(originals) - set().union(*removed)
        gone = sum(map(len, removed))
        assert abs(gone - 0.5 * 256) <= max(map(len, groups)) / 2  # the closest whole-group count to the ratio


@pytest.mark.parametrize("n", [1024, 8192])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6])
def test_mask_ratio_is_the_fraction_of_points_removed_at_any_cloud_size(n, ratio):
    points = cloud(batch=2, n=n, seed=n)
    out = mask_groups(points, ratio, num_groups=32, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        removed = 1 - len(rows_as_set(out[b])) / n
        assert abs(removed - ratio) < 0.04, (b, removed)  # whole groups of about n / 32 points each


def test_mask_groups_is_reproducible_and_identity_at_ratio_zero():
    points = cloud(n=128)
    kwargs = dict(num_groups=8)
    a = mask_groups(points, 0.25, generator=torch.Generator().manual_seed(3), **kwargs)
    b = mask_groups(points, 0.25, generator=torch.Generator().manual_seed(3), **kwargs)
    c = mask_groups(points, 0.25, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(mask_groups(points, 0.0, generator=torch.Generator(), **kwargs), points)
    for bad in (1.0, 1.5):  # removing every point leaves nothing to refill from
        with pytest.raises(ValueError, match="ratio"):
            mask_groups(points, bad, generator=torch.Generator(), **kwargs)


def test_gaussian_noise_moves_xyz_only():
    points = cloud(n=4000)
    noisy = gaussian_noise(points, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[..., 3:], points[..., 3:])
    delta = noisy[..., :3] - points[..., :3]
    assert abs(delta.std().item() - 0.05) < 0.005 and abs(delta.mean().item()) < 0.005
    assert torch.equal(noisy, gaussian_noise(points, 0.05, torch.Generator().manual_seed(0)))


def test_drop_points_keeps_shape_and_drops_the_ratio():
    points = cloud(n=100)
    out = drop_points(points, 0.3, torch.Generator().manual_seed(0))
    assert out.shape == points.shape
    for b in range(2):
        survivors = rows_as_set(out[b])
        assert survivors <= rows_as_set(points[b]) and len(survivors) == 70
        kept_in_order = [r for r in points[b].tolist() if tuple(r) in survivors]
        assert out[b, :70].tolist() == kept_in_order  # survivors first, in their original order
