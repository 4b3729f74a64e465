"""Point-BERT-style point-cloud encoder (the PointLLM point backbone), plus the transformer blocks it shares
with the image encoder.

Parameter names and shapes follow Point-BERT's `PointTransformer` / PointLLM's `point_backbone`
(`encoder.first_conv.0.weight`, `reduce_dim`, `cls_token`, `cls_pos`, `pos_embed.0.weight`,
`blocks.blocks.0.attn.qkv.weight`, `norm.weight`, ...), so loading their checkpoints is a prefix mapping
(see `checkpoints.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policies.point_ops import farthest_point_sample, group_points


@dataclass
class PointEncoderConfig:
    """Defaults are PointLLM v1.2's backbone (PointTransformer_8192point_2layer.yaml, with colour)."""

    num_groups: int = 512
    group_size: int = 32
    width: int = 384  # Point-BERT's trans_dim
    depth: int = 12
    heads: int = 6
    encoder_dims: int = 256
    point_dims: int = 6  # 3 = xyz, 6 = xyz + rgb


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with Point-BERT's layout: one bias-free qkv projection, then proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (mlp ratio 4), as in Point-BERT."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """A stack of blocks; the positional embedding is re-added before every block, as Point-BERT does."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x + pos)
        return x


class MiniPointNet(nn.Module):
    """Point-BERT's group embedding: a shared MLP, max-pool, concat the pooled feature, MLP, max-pool."""

    def __init__(self, point_dims: int, out_dims: int):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv1d(point_dims, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_dims, 1)
        )
        self.train(False)  # modules start in training mode, which would give a policy never put in train() or eval()
        # batch statistics and move its running ones

    def train(self, mode: bool = True) -> "MiniPointNet":
        # BatchNorm always uses its running statistics: batch statistics would make one sample's tokens
        # depend on the rest of its batch, and rollout and learner batches differ.
        return super().train(False)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """(B, G, k, C) -> (B, G, out_dims)."""
        b, g, k, c = groups.shape
        feature = self.first_conv(groups.reshape(b * g, k, c).transpose(1, 2))
        pooled = feature.max(dim=2, keepdim=True).values
        feature = self.second_conv(torch.cat([pooled.expand(-1, -1, k), feature], dim=1))
        return feature.max(dim=2).values.reshape(b, g, -1)


class PointBertEncoder(nn.Module):
    """Point cloud (B, N, >=point_dims) -> tokens (B, num_groups + 1, width) [cls first] and centres (B, G, 3)."""

    def __init__(self, config: PointEncoderConfig):
        super().__init__()
        if config.point_dims not in (3, 6):
            raise ValueError(f"point_dims must be 3 (xyz) or 6 (xyz+rgb), got {config.point_dims}")
        self.config = config
        self.encoder = MiniPointNet(config.point_dims, config.encoder_dims)
        self.reduce_dim = nn.Linear(config.encoder_dims, config.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.width))
        self.blocks = TransformerEncoder(config.width, config.depth, config.heads)
        self.norm = nn.LayerNorm(config.width)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.config.num_groups + 1

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloud (B, N, >=point_dims) -> patches (B, G, k, point_dims), xyz relative to their centres (B, G, 3)."""
        cfg = self.config
        if points.dim() != 3 or points.shape[-1] < cfg.point_dims or points.shape[1] < cfg.num_groups:
            raise ValueError(
                f"point encoder expects (B, N>={cfg.num_groups}, C>={cfg.point_dims}) points, got {tuple(points.shape)}"
            )
        points = points[..., : cfg.point_dims].float()
        return group_points(points, farthest_point_sample(points, cfg.num_groups), cfg.group_size)

    def encode(
        self,
        groups: torch.Tensor,
        centers: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patches -> tokens (B, G + 1, width). A patch where `patch_mask` (B, G) is True enters the transformer as
        `mask_token` (width,) at its centre's position, as in Point-BERT's masked point modeling: no token, the
        other patches' included, then holds anything of its shape."""
        tokens = self.reduce_dim(self.encoder(groups))  # [B, G, width]
        if patch_mask is not None:
            tokens = torch.where(patch_mask[..., None], mask_token.to(tokens.dtype), tokens)
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centers)], dim=1)
        return self.norm(self.blocks(x, pos))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups, centers = self.group(points)
        return self.encode(groups, centers), centers
