"""Image encoders: a small patch transformer (default, trained from scratch) or a Hugging Face vision tower
(CLIP / SigLIP vision model) loaded from a local directory. Both map preprocessed pixels (B, 3, S, S) to
patch tokens (B, P, width) plus each patch centre's normalised (u, v) in [0, 1]^2."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policies.point_encoder import TransformerEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageEncoderConfig:
    kind: str = "patch"  # "patch" (small transformer, from scratch) | "hf" (vision tower in hf_dir)
    hf_dir: str | None = None
    image_size: int = 224  # for "hf" it is read from the tower's config
    patch_size: int = 16  # idem
    width: int = 384  # idem (the tower's hidden_size)
    depth: int = 4
    heads: int = 6
    mean: tuple[float, ...] = CLIP_MEAN  # for "hf" read from preprocessor_config.json when present
    std: tuple[float, ...] = CLIP_STD


def preprocess_images(images: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """uint8 images (B, H, W, 3) -> normalised float pixels (B, 3, S, S), resized (aspect not kept) to S."""
    if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    pixels = images.permute(0, 3, 1, 2).float() / 255.0
    size = (config.image_size, config.image_size)
    if pixels.shape[-2:] != size:
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(config.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def patch_centres(grid: int, device: torch.device | None = None) -> torch.Tensor:
    """(grid * grid, 2) patch-centre (u, v) in [0, 1], row-major like the patch tokens."""
    c = (torch.arange(grid, dtype=torch.float32, device=device) + 0.5) / grid
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.flatten(), v.flatten()], dim=-1)


class PatchImageEncoder(nn.Module):
    """Conv patch embedding + learned (u, v) position MLP + the Point-BERT-style transformer blocks."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        self.config = config
        self.grid = config.image_size // config.patch_size
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.pos_embed = nn.Sequential(nn.Linear(2, 128), nn.GELU(), nn.Linear(128, config.width))
        self.blocks = TransformerEncoder(config.width, config.depth, config.heads)
        self.norm = nn.LayerNorm(config.width)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        uv = patch_centres(self.grid, pixels.device)
        return self.norm(self.blocks(x, self.pos_embed(uv)[None])), uv


class HFImageEncoder(nn.Module):
    """A transformers vision tower; its last hidden state minus any leading CLS token gives the patch tokens."""

    def __init__(self, tower: nn.Module, config: ImageEncoderConfig):
        super().__init__()
        self.tower = tower
        self.config = config
        self.grid = config.image_size // config.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.tower(pixel_values=pixels.to(self.tower.dtype)).last_hidden_state
        return hidden[:, -self.num_tokens :].float(), patch_centres(self.grid, pixels.device)


def load_vision_tower(directory: str | Path) -> nn.Module:
    """The vision model in a local HF directory: a vision-only checkpoint, or the vision half of a dual
    (CLIP / SigLIP) checkpoint."""
    from transformers import MODEL_MAPPING, AutoConfig, AutoModel

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(directory)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is None:
        return AutoModel.from_pretrained(directory)
    return MODEL_MAPPING[type(vision_config)].from_pretrained(directory, config=vision_config)


def hf_image_config(tower: nn.Module, base: ImageEncoderConfig, directory: str | Path | None) -> ImageEncoderConfig:
    """`base` with the sizes and normalisation of `tower` (and of `directory`'s preprocessor_config.json)."""
    cfg = tower.config
    mean, std = base.mean, base.std
    processor_file = Path(directory) / "preprocessor_config.json" if directory else None
    if processor_file is not None and processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean, std = tuple(processor.get("image_mean", mean)), tuple(processor.get("image_std", std))
    return ImageEncoderConfig(
        kind="hf",
        hf_dir=str(directory) if directory else base.hf_dir,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.hidden_size,
        depth=base.depth,
        heads=base.heads,
        mean=mean,
        std=std,
    )
