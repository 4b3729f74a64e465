"""Geometry-guided cross-attention from point tokens to image tokens, and the MLP projectors to the LLM width.

The fusion receives no camera: projecting 3D centres into the image is camera math, whose single home is
`rewards/camera.py` (outside what `policies` may import). Instead the queries carry an encoding of each
group's 3D centre and the keys an encoding of each patch's 2D centre, and the attention learns the
view-dependent correspondence between them.
"""

from __future__ import annotations

import torch
from torch import nn


class GeometryGuidedFusion(nn.Module):
    """Point tokens (queries + xyz-centre encoding) attend to image tokens (keys/values + (u, v) encoding);
    pre-norm residual, so a sample without an image keeps its point tokens unchanged."""

    def __init__(self, width: int, image_width: int, heads: int):
        super().__init__()
        self.point_pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.image_pos = nn.Sequential(nn.Linear(2, 128), nn.GELU(), nn.Linear(128, width))
        self.image_in = nn.Linear(image_width, width)
        self.norm_query = nn.LayerNorm(width)
        self.norm_image = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(
        self,
        point_tokens: torch.Tensor,
        centers: torch.Tensor,
        image_tokens: torch.Tensor,
        image_uv: torch.Tensor,
        has_image: torch.Tensor,
    ) -> torch.Tensor:
        """point_tokens (B, 1+G, W) [cls first], centers (B, G, 3), image_tokens (B_img, P, Wi) for the rows
        where has_image (B,) is True, image_uv (P, 2) -> fused point tokens (B, 1+G, W)."""
        rows = torch.nonzero(has_image).flatten()
        if rows.numel() != image_tokens.shape[0]:
            raise ValueError(f"{image_tokens.shape[0]} image token sets for {rows.numel()} samples with an image")
        if rows.numel() == 0:
            return point_tokens
        tokens = point_tokens[rows]
        cls_pos = torch.zeros_like(tokens[:, :1])
        query = self.norm_query(tokens) + torch.cat([cls_pos, self.point_pos(centers[rows])], dim=1)
        image = self.norm_image(self.image_in(image_tokens))
        attended, _ = self.attn(query, image + self.image_pos(image_uv)[None], image, need_weights=False)
        return point_tokens.index_put((rows,), tokens + attended)


def make_projector(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear -> GELU -> ... -> Linear; indices match PointLLM's `point_proj` (v1.2: hidden (1024, 2048))."""
    layers: list[nn.Module] = []
    for hidden in hidden_dims:
        layers += [nn.Linear(in_dim, hidden), nn.GELU()]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
