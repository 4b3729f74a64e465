"""The policy's configuration and the tensors that travel between `prepare`, `embed`, `logprobs` and `generate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass

import torch

from policies.image_encoder import ImageEncoderConfig
from policies.point_encoder import PointEncoderConfig

LLM_MODES = ("full", "lora", "frozen")
IMAGE_KINDS = ("patch", "hf", "qwen_vl")  # qwen_vl: the vision tower of a Qwen-VL backbone (policies/qwen_vl.py)
FUSIONS = ("learned", "camera")  # policies/fusion.py: attention by learned position encodings, or plus a camera bias
LLM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PointVLMConfig:
    """What the policy is built from and which parts train. Defaults are real sizes (PointLLM v1.2 layout)."""

    point: PointEncoderConfig = field(default_factory=PointEncoderConfig)
    image: ImageEncoderConfig | None = field(default_factory=ImageEncoderConfig)  # None: points only
    fusion_heads: int = 6
    fusion: str = "learned"  # "learned" | "camera" (policies/fusion.py); a folder saved before the key: learned
    point_proj_hidden: tuple[int, ...] = (1024, 2048)  # PointLLM v1.2's point_proj
    image_proj_hidden: tuple[int, ...] = (1024,)
    llm_mode: str = "full"  # "full" | "lora" | "frozen"
    llm_dtype: str = "float32"  # "float32" | "bfloat16" | "float16"; the encoders always run in float32
    train_point_encoder: bool = False
    train_image_encoder: bool | None = None  # None: train the from-scratch patch encoder, freeze an HF tower
    train_fusion: bool = True
    train_projector: bool = True
    align_dims: int = (
        0  # outputs of the cloud-alignment head on the mean point token (rl.algorithms.losses); 0: no head
    )
    recon_head: bool = False  # the masked point-patch reconstruction head (policies.reconstruction), training-only
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # > 0 makes learner (train mode) and rollout (eval) log-probs differ
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self) -> None:
        if self.llm_mode not in LLM_MODES:
            raise ValueError(f"PointVLMConfig.llm_mode={self.llm_mode!r}: must be one of {LLM_MODES}")
        if self.llm_dtype not in LLM_DTYPES:
            raise ValueError(f"PointVLMConfig.llm_dtype={self.llm_dtype!r}: must be one of {tuple(LLM_DTYPES)}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"PointVLMConfig.fusion={self.fusion!r}: must be one of {FUSIONS}")
        if self.image is not None and self.image.kind not in IMAGE_KINDS:
            raise ValueError(f"PointVLMConfig.image.kind={self.image.kind!r}: must be one of {IMAGE_KINDS}")

    @property
    def image_encoder_trains(self) -> bool:
        if self.train_image_encoder is not None:
            return self.train_image_encoder
        return self.image is not None and self.image.kind == "patch"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PointVLMConfig":
        data = _checked(cls, data, "PointVLMConfig")
        data["point"] = PointEncoderConfig(**_checked(PointEncoderConfig, data.get("point", {}), "point"))
        if data.get("image") is not None:
            image = _checked(ImageEncoderConfig, data["image"], "image")
            image.update({k: tuple(image[k]) for k in ("mean", "std") if k in image})
            data["image"] = ImageEncoderConfig(**image)
        for key in ("point_proj_hidden", "image_proj_hidden", "lora_target_modules"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def _checked(cls: type, data: dict, where: str) -> dict:
    if is_dataclass(data):
        data = asdict(data)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
    return dict(data)


@dataclass
class PolicyInputs:
    """A batch of prompts: left-padded chat-template token ids with placeholder tokens, the clouds, and the
    preprocessed images of the rows that have one (`images[i]` belongs to the i-th row where has_image). For a
    Qwen-VL tower (dynamic resolution) `images` holds those images' patches one after the other, (sum of t*h*w,
    C*T*P*P) as its image processor writes them, and `image_grid_thw` (B_img, 3) each image's (t, h, w) patch grid.
    `projections[i]` maps the i-th image's world points onto its image-normalised (u, v) (`data3d.Camera.
    image_projection`), for the camera-guided fusion; None when some image came without a camera."""

    input_ids: torch.Tensor  # (B, L) long, left padded
    attention_mask: torch.Tensor  # (B, L) long
    points: torch.Tensor  # (B, N, C) float32
    has_image: torch.Tensor  # (B,) bool
    images: torch.Tensor | None = None  # (B_img, 3, S, S) float32, B_img = has_image.sum()
    image_grid_thw: torch.Tensor | None = None  # (B_img, 3) long, only for a Qwen-VL tower
    projections: torch.Tensor | None = None  # (B_img, 3, 4) float32

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> "PolicyInputs":
        return PolicyInputs(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.points.to(device),
            self.has_image.to(device),
            None if self.images is None else self.images.to(device),
            None if self.image_grid_thw is None else self.image_grid_thw.to(device),
            None if self.projections is None else self.projections.to(device),
        )

    def select(self, rows: torch.Tensor | list[int]) -> "PolicyInputs":
        """The rows `rows` (in that order, repeats allowed)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        has_image = self.has_image[rows]
        images = grid = projections = None
        if self.images is not None and has_image.any():
            image_row = torch.cumsum(self.has_image.long(), 0) - 1
            picked = image_row[rows[has_image]]
            if self.projections is not None:
                projections = self.projections[picked]
            if self.image_grid_thw is None:
                images = self.images[picked]
            else:  # each image is a run of patches: gather the runs of the picked images
                sizes = self.image_grid_thw.prod(-1)
                starts = (sizes.cumsum(0) - sizes)[picked].tolist()
                images = torch.cat([self.images[s : s + n] for s, n in zip(starts, sizes[picked].tolist())])
                grid = self.image_grid_thw[picked]
        return PolicyInputs(
            self.input_ids[rows], self.attention_mask[rows], self.points[rows], has_image, images, grid, projections
        )

    def repeat_interleave(self, n: int) -> "PolicyInputs":
        """Each row n times in a row: the order of `generate(num_return_sequences=n)`'s outputs."""
        return self.select(torch.arange(len(self)).repeat_interleave(n))


def image_projections(projections: list | None, has_image: torch.Tensor) -> torch.Tensor | None:
    """`PolicyInputs.projections` from one (3, 4) matrix or None per prompt: those of the rows with an image, or None
    when any of them has none (a policy with the learned fusion reads no camera; the camera fusion names the lack)."""
    if projections is None:
        return None
    if len(projections) != len(has_image):
        raise ValueError(f"{len(projections)} projections for {len(has_image)} prompts")
    kept = [p for p, h in zip(projections, has_image.tolist()) if h]
    if not kept or any(p is None for p in kept):
        return None
    return torch.stack([torch.as_tensor(p, dtype=torch.float32).reshape(3, 4) for p in kept])


@dataclass
class Generation:
    """Sampled responses, row b * G + g = the g-th sample for prompt b."""

    response_ids: torch.Tensor  # (B*G, T) long, pad after the stop token
    response_mask: torch.Tensor  # (B*G, T) long, 1 up to and including the first stop token
    logprobs: torch.Tensor  # (B*G, T) float32, raw-distribution log-probs of the sampled tokens, 0 where masked
    texts: list[str]  # decoded responses without special tokens


def place_features(embeds: torch.Tensor, slots: torch.Tensor, features: torch.Tensor, what: str) -> torch.Tensor:
    """Write features (R, n, hidden) over the n placeholder slots of each row that has any, in order; features
    (sum of n, hidden) fill every slot, row after row, when the rows hold different numbers of them."""
    counts = slots.sum(dim=1)
    rows_with = counts > 0
    if features.dim() == 2:
        if counts.sum() != features.shape[0]:
            raise ValueError(f"{what} placeholders per row {counts.tolist()} do not match {features.shape[0]} tokens")
    elif rows_with.sum() != features.shape[0] or (counts[rows_with] != features.shape[1]).any():
        raise ValueError(
            f"{what} placeholders per row {counts.tolist()} do not match {features.shape[0]} feature sets "
            f"of {features.shape[1]} tokens"
        )
    return embeds.masked_scatter(slots[..., None], features.to(embeds.dtype))
