"""Batched point-cloud operations: farthest-point sampling, kNN, grouping and the SPA input corruptions.

Every function is pure and deterministic given its inputs (and its `torch.Generator` where randomness is
involved): the same cloud always gives the same centres and groups, so the rollout and the learner see the
same point tokens and agree on log-probs. Distances are computed elementwise (never through a matmul) so
a sample's result does not depend on which other samples share its batch.
"""

from __future__ import annotations

import torch


def _check_cloud(points: torch.Tensor, name: str = "points") -> None:
    if points.dim() != 3 or points.shape[-1] < 3:
        raise ValueError(f"{name} must be (B, N, C>=3), got shape {tuple(points.shape)}")


def _squared_distances(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, M, 3), (B, N, 3) -> (B, M, N) exact squared Euclidean distances, one coordinate at a time to
    avoid a (B, M, N, 3) intermediate."""
    total = torch.zeros(query.shape[0], query.shape[1], ref.shape[1], dtype=query.dtype, device=query.device)
    for c in range(3):
        total += (query[:, :, None, c] - ref[:, None, :, c]) ** 2
    return total


def farthest_point_sample(xyz: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    """Indices (B, k) of k farthest points, starting at index `start`; ties go to the lowest index."""
    _check_cloud(xyz, "xyz")
    batch, num_points, _ = xyz.shape
    if not 0 < k <= num_points:
        raise ValueError(f"farthest_point_sample: k={k} must be in [1, {num_points}] (the number of points)")
    if not 0 <= start < num_points:
        raise ValueError(f"farthest_point_sample: start={start} must be in [0, {num_points})")
    xyz = xyz[..., :3]
    rows = torch.arange(batch, device=xyz.device)
    chosen = torch.empty(batch, k, dtype=torch.long, device=xyz.device)
    nearest = torch.full((batch, num_points), float("inf"), dtype=xyz.dtype, device=xyz.device)
    current = torch.full((batch,), start, dtype=torch.long, device=xyz.device)
    for i in range(k):
        chosen[:, i] = current
        d = ((xyz - xyz[rows, current][:, None, :]) ** 2).sum(-1)
        nearest = torch.minimum(nearest, d)
        current = nearest.argmax(dim=1)  # argmax returns the first maximal index: ties -> lowest index
    return chosen


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) of the k nearest `ref` points (B, N, >=3) to each `query` point (B, M, >=3), nearest first."""
    _check_cloud(query, "query")
    _check_cloud(ref, "ref")
    if query.shape[0] != ref.shape[0]:
        raise ValueError(f"knn: batch sizes differ, query {tuple(query.shape)} vs ref {tuple(ref.shape)}")
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f"knn: k={k} must be in [1, {ref.shape[1]}] (the number of reference points)")
    d = _squared_distances(query[..., :3], ref[..., :3])
    # a stable sort keeps equal distances in index order, so ties resolve the same way on every device
    return torch.sort(d, dim=-1, stable=True).indices[..., :k]


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """points (B, N, C) gathered at idx (B, ...) -> (B, ..., C)."""
    flat = idx.reshape(idx.shape[0], -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def group_points(points: torch.Tensor, centers_idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups (B, G, k, C) of each centre's k nearest points, xyz relative to the centre, plus centres (B, G, 3).

    Extra channels (rgb) are kept as they are, as Point-BERT / PointLLM's grouping does.
    """
    _check_cloud(points)
    centers = gather_points(points[..., :3], centers_idx)
    groups = gather_points(points, knn(centers, points, k))
    xyz = groups[..., :3] - centers[:, :, None, :]
    return torch.cat([xyz, groups[..., 3:]], dim=-1), centers


def _refill(points: torch.Tensor, keep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep the points where `keep` (B, N) is True, in order, and fill the rest of the N slots with copies of
    kept points drawn uniformly with replacement, so the output has the input's shape."""
    num_points = points.shape[1]
    num_kept = keep.sum(dim=1)
    if (num_kept == 0).any():
        empty = torch.nonzero(num_kept == 0).flatten().tolist()
        raise ValueError(f"corruption removed every point of batch rows {empty}; lower the ratio")
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept indices first, in order
    draw = torch.rand(points.shape[:2], generator=generator, device=generator.device).to(points.device)
    fill = (draw * num_kept[:, None]).long().clamp(max=num_points - 1)
    slot = torch.arange(num_points, device=points.device).expand_as(fill)
    source = torch.where(slot < num_kept[:, None], slot, fill)
    return gather_points(points, torch.gather(order, 1, source))


def mask_groups(points: torch.Tensor, ratio: float, num_groups: int, generator: torch.Generator) -> torch.Tensor:
    """SPA 3D masking (SPA §3, Fig. 5) where `ratio` is the fraction of points removed at any cloud size.

    FPS picks `num_groups` centres and every point joins its nearest centre's group, so the groups partition the
    cloud (fixed-size kNN groups would cover a shrinking share of a larger cloud). Whole groups are removed in a
    random order, as many as bring the removed count closest to ratio * N (never all of them). The output keeps the
    input's (B, N, C) shape: surviving points come first in their original order and the freed slots hold
    duplicates of surviving points drawn uniformly with replacement (duplicates add no new geometry, so the
    encoder's max-pooled groups see only the unmasked surface).
    """
    _check_cloud(points)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_groups: ratio={ratio} must be in [0, 1)")
    batch, num_points, _ = points.shape
    centers = gather_points(points[..., :3], farthest_point_sample(points, num_groups))
    owner = _squared_distances(points[..., :3], centers).argmin(-1)  # [B, N] nearest centre, ties to the lowest
    sizes = torch.nn.functional.one_hot(owner, num_groups).sum(dim=1)  # [B, G] points per group
    scores = torch.rand(batch, num_groups, generator=generator, device=generator.device).to(points.device)
    order = scores.argsort(dim=1)  # [B, G] the groups in the order they are removed
    removed = torch.cat([sizes.new_zeros(batch, 1), sizes.gather(1, order).cumsum(1)[:, :-1]], dim=1)  # [B, G]
    num_masked = (removed - ratio * num_points).abs().argmin(dim=1)  # [B] removing k groups takes removed[:, k] points
    masked = order.argsort(dim=1) < num_masked[:, None]  # [B, G] a group's place in the order is before the cut
    return _refill(points, ~masked.gather(1, owner), generator)


def gaussian_noise(points: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """SPA Table 2 'Gaussian' corruption: N(0, std^2) added to xyz; colour channels are left unchanged."""
    _check_cloud(points)
    if std < 0:
        raise ValueError(f"gaussian_noise: std={std} must be >= 0")
    noise = torch.randn(points.shape[:2] + (3,), generator=generator, device=generator.device).to(points)
    return torch.cat([points[..., :3] + std * noise, points[..., 3:]], dim=-1)


def drop_points(points: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """SPA Table 2 'random drop': floor(ratio * N) random points removed, refilled with duplicates of the rest
    (same rule as `mask_groups`), so the output keeps shape (B, N, C)."""
    _check_cloud(points)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"drop_points: ratio={ratio} must be in [0, 1)")
    batch, num_points, _ = points.shape
    scores = torch.rand(batch, num_points, generator=generator, device=generator.device).to(points.device)
    dropped = scores.argsort(dim=1)[:, : int(ratio * num_points)]
    keep = torch.ones(batch, num_points, dtype=torch.bool, device=points.device)
    keep.scatter_(1, dropped, False)
    return _refill(points, keep, generator)
