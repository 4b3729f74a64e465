"""Masked point-patch reconstruction from the LLM's point tokens: ROSS3D's reconstructive visual supervision
(Wang et al., "ROSS3D", §4: recover the masked part of the visual input from the LMM's visual outputs), transposed
from masked views to masked point patches. Training-only: the head and the mask token play no part in generation.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchReconstructionHead(nn.Module):
    """`mask_token` (point width,) stands in for a masked patch inside the point encoder; `forward` maps the LLM's
    hidden state at a masked patch's point token to that patch's k points (xyz relative to its centre)."""

    def __init__(self, point_width: int, hidden: int, points_per_patch: int):
        super().__init__()
        self.points_per_patch = points_per_patch
        self.mask_token = nn.Parameter(torch.zeros(point_width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, points_per_patch * 3))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(M, hidden) -> (M, k, 3)."""
        return self.mlp(hidden_states.float()).view(-1, self.points_per_patch, 3)


def random_patch_mask(batch: int, patches: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, patches) bool: round(ratio x patches) patches of each row drawn uniformly without replacement, at
    least one and never all (an all-masked cloud leaves nothing to reconstruct from)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"patch mask ratio must be in (0, 1), got {ratio}")
    if patches < 2:
        raise ValueError(f"patch masking needs at least 2 patches, got {patches}")
    count = min(max(1, round(ratio * patches)), patches - 1)
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    return order < count
