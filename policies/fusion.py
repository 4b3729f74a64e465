"""Geometry-guided cross-attention from point tokens to image tokens (GRCA §3.1, eqs. 2-3), and the MLP projectors to
the LLM width (eq. 4).

The queries carry an encoding of each point group's 3D centre and the keys an encoding of each patch's 2D centre. With
`fusion="learned"` that is all: the attention must learn the view-dependent correspondence between the two. With
`fusion="camera"` the fusion also receives each image's camera, as the (3, 4) matrix that maps world points onto
image-normalised (u, v) (built by `rewards.camera.image_projection`, the one home of camera math, and handed over by
`data3d.Camera.image_projection` through `PolicyInputs.projections`); it applies that matrix to the group centres and
biases each head's attention by the squared image distance between a group's projection and each patch centre, so a
point token looks first at the patches it lies on. The prompt text carries no camera: the 2D fields are bins over the
image and the 3D ones bins over the object bounds, so nothing the model writes needs the camera's numbers, only the
correspondence, which the bias gives.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The widths (fractions of the image) of the heads' Gaussians at initialisation, spread geometrically from the first
# head to the last: narrow heads read the patch under a group, wide ones its surroundings.
BIAS_WIDTHS = (1 / 16, 1 / 2)


def project_centres(centers: torch.Tensor, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (B, G, 3) through image projections (B, 3, 4) -> image-normalised (u, v) (B, G, 2) and depth (B, G)."""
    # x ~ P [X, 1], the pinhole model x = K (R X + t) as one matrix; (u, v) = (x1, x2) / x3, x3 the depth
    x = centers @ projection[:, :, :3].transpose(1, 2) + projection[:, None, :, 3]
    depth = x[..., 2]
    return x[..., :2] / torch.where(depth > 0, depth, 1.0)[..., None], depth


def camera_bias(uv: torch.Tensor, depth: torch.Tensor, patch_uv: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Attention bias (B, heads, G, P): -exp(log_scale[h]) * |uv_g - patch_uv_p|^2, 0 for a centre behind the camera."""
    # a Gaussian of learned width per head around the group's projection, added to the logits of eq. 2's softmax
    distance2 = (uv[:, None, :, None, :] - patch_uv[None, None, None]).square().sum(-1)  # [B, 1, G, P]
    bias = -log_scale.exp()[None, :, None, None] * distance2
    return bias * (depth > 0)[:, None, :, None]


class GeometryGuidedFusion(nn.Module):
    """Point tokens (queries + xyz-centre encoding) attend to image tokens (keys/values + (u, v) encoding), with the
    camera bias when `fusion == "camera"`; pre-norm residual, so a sample without an image keeps its point tokens."""

    def __init__(self, width: int, image_width: int, heads: int, fusion: str = "learned"):
        super().__init__()
        self.point_pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.image_pos = nn.Sequential(nn.Linear(2, 128), nn.GELU(), nn.Linear(128, width))
        self.image_in = nn.Linear(image_width, width)
        self.norm_query = nn.LayerNorm(width)
        self.norm_image = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.camera_log_scale = None
        if fusion == "camera":
            widths = torch.logspace(math.log10(BIAS_WIDTHS[0]), math.log10(BIAS_WIDTHS[1]), heads)
            # exp(log_scale) = 1 / (2 width^2): the bias falls by 1/2 at one width from the projection
            self.camera_log_scale = nn.Parameter(-torch.log(2 * widths.square()))

    def forward(
        self,
        point_tokens: torch.Tensor,
        centers: torch.Tensor,
        image_tokens: torch.Tensor,
        image_uv: torch.Tensor,
        has_image: torch.Tensor,
        projections: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """point_tokens (B, 1+G, W) [cls first], centers (B, G, 3), image_tokens (B_img, P, Wi) for the rows
        where has_image (B,) is True, image_uv (P, 2), projections (B_img, 3, 4) -> fused point tokens (B, 1+G, W)."""
        rows = torch.nonzero(has_image).flatten()
        if rows.numel() != image_tokens.shape[0]:
            raise ValueError(f"{image_tokens.shape[0]} image token sets for {rows.numel()} samples with an image")
        if rows.numel() == 0:
            return point_tokens
        tokens = point_tokens[rows]
        cls_pos = torch.zeros_like(tokens[:, :1])
        query = self.norm_query(tokens) + torch.cat([cls_pos, self.point_pos(centers[rows])], dim=1)
        image = self.norm_image(self.image_in(image_tokens))
        bias = None if self.camera_log_scale is None else self._bias(centers[rows], projections, image_uv)
        attended, _ = self.attn(
            query, image + self.image_pos(image_uv)[None], image, attn_mask=bias, need_weights=False
        )
        return point_tokens.index_put((rows,), tokens + attended)

    def _bias(self, centers: torch.Tensor, projections: torch.Tensor | None, image_uv: torch.Tensor) -> torch.Tensor:
        """The camera bias as `nn.MultiheadAttention`'s float mask (B_img * heads, 1+G, P); the cls token gets none."""
        if projections is None:
            raise ValueError(
                "the camera fusion needs each image's camera: build the inputs with rollout.batching.policy_inputs "
                "(or give PointVLM.prepare the projections of data3d.Camera.image_projection)"
            )
        uv, depth = project_centres(centers, projections)
        bias = camera_bias(uv, depth, image_uv, self.camera_log_scale)
        bias = torch.cat([torch.zeros_like(bias[:, :, :1]), bias], dim=2)
        return bias.flatten(0, 1)


def make_projector(in_dim: int, hidden_dims: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear -> GELU -> ... -> Linear; indices match PointLLM's `point_proj` (v1.2: hidden (1024, 2048))."""
    layers: list[nn.Module] = []
    for hidden in hidden_dims:
        layers += [nn.Linear(in_dim, hidden), nn.GELU()]
        in_dim = hidden
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
