"""PointVLM: point (and image) encoders + fusion + projectors in front of any Hugging Face causal LM.

Projected point features replace the `<point_patch>` placeholder embeddings (and image features the
`<image_patch>` ones) of a chat-template prompt; the LLM then runs on `inputs_embeds`. One directory holds a
saved policy: `llm/` (a standard HF model folder + tokenizer, LoRA merged, loadable by transformers and
vLLM), `pointvlm.json` (the config), `vision.safetensors` (encoders, fusion, projectors) and, for an HF
vision tower, `image_tower/`. A Qwen-VL folder gives `QwenVLPointVLM` (policies/qwen_vl.py): its own tower, M-RoPE.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from policies.checkpoints import load_point_checkpoint, load_trainable_state, load_vision_state, vision_state
from policies.fusion import GeometryGuidedFusion, make_projector
from policies.generation import (
    find_stop_ids,
    reset_generation_config,
    response_logprobs,
    sample_responses,
    stop_mask,
)
from policies.hf_llm import apply_llm_mode, load_tokenizer, merged_lora_state
from policies.image_encoder import (
    HFImageEncoder,
    ImageEncoderConfig,
    PatchImageEncoder,
    hf_image_config,
    load_vision_tower,
    preprocess_images,
)
from policies.inputs import LLM_DTYPES, Generation, PointVLMConfig, PolicyInputs, image_projections, place_features
from policies.point_encoder import PointBertEncoder
from policies.reconstruction import PatchReconstructionHead

POINT_START, POINT_PATCH, POINT_END = "<point_start>", "<point_patch>", "<point_end>"
IMAGE_START, IMAGE_PATCH, IMAGE_END = "<image_start>", "<image_patch>", "<image_end>"
SPECIAL_TOKENS = (POINT_START, POINT_PATCH, POINT_END, IMAGE_START, IMAGE_PATCH, IMAGE_END)
VISION_PARTS = ("point_encoder", "image_encoder", "fusion", "point_proj", "image_proj", "align_head", "recon_head")
ADDABLE = ("align_head", "recon_head", "fusion.camera_log_scale")  # config overrides add them: fresh when unsaved


class PointVLM(nn.Module):
    """The policy. Build it with `from_components` (real run), `from_pretrained` (a saved directory) or
    `policies.build_tiny_policy`; the constructor takes an already loaded LLM and tokenizer, adds the
    placeholder tokens, builds the vision side from `config` and sets which parameters train."""

    def __init__(self, config: PointVLMConfig, llm: nn.Module, tokenizer, image_tower: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        tokenizer.add_tokens([t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()], special_tokens=True)
        tokenizer.padding_side = "left"  # batched generation from inputs_embeds needs the prompts right-aligned
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(tokenizer))
        self.token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        self.stop_ids = find_stop_ids(llm, tokenizer)
        reset_generation_config(llm, tokenizer, self.stop_ids)
        llm.to(LLM_DTYPES[config.llm_dtype])
        hidden = llm.get_input_embeddings().embedding_dim

        self.point_encoder = PointBertEncoder(config.point)
        self.point_proj = make_projector(config.point.width, config.point_proj_hidden, hidden)
        # a linear read-out of the mean point token, trained on what the cloud decides (box, category, colour) so
        # that the point tokens carry it from the start; training-only, it plays no part in generation
        self.align_head = nn.Linear(hidden, config.align_dims) if config.align_dims else None
        self.recon_head = (
            PatchReconstructionHead(config.point.width, hidden, config.point.group_size) if config.recon_head else None
        )
        self.image_encoder = self.fusion = self.image_proj = None
        if config.image is not None:
            self.image_encoder = self._image_encoder(config.image, image_tower)
            self.fusion = GeometryGuidedFusion(
                config.point.width, config.image.width, config.fusion_heads, config.fusion
            )
            self.image_proj = make_projector(config.image.width, config.image_proj_hidden, hidden)
        self.llm = apply_llm_mode(llm, config)
        self._set_trainable()

    def _image_encoder(self, image: ImageEncoderConfig, tower: nn.Module | None) -> nn.Module:
        if image.kind == "patch":
            return PatchImageEncoder(image)
        if image.kind != "hf" or tower is None:  # qwen_vl: QwenVLPointVLM, which PointVLM.from_components builds
            raise ValueError(f"PointVLMConfig.image.kind={image.kind!r} needs an image_tower (see load_vision_tower)")
        return HFImageEncoder(tower, image)

    def _set_trainable(self) -> None:
        cfg = self.config
        self.point_encoder.requires_grad_(cfg.train_point_encoder)
        self.point_proj.requires_grad_(cfg.train_projector)
        if self.image_encoder is not None:
            self.image_encoder.requires_grad_(cfg.image_encoder_trains)
            self.fusion.requires_grad_(cfg.train_fusion)
            self.image_proj.requires_grad_(cfg.train_projector)

    @property
    def device(self) -> torch.device:
        return self.point_proj[0].weight.device

    # ---- prompts -------------------------------------------------------------------------------------

    IMAGE_BLOCK = (IMAGE_START, IMAGE_PATCH, IMAGE_END)  # the markers and placeholder of an image's tokens

    def prompt_text(self, instruction: str, image_tokens: int = 0) -> str:
        """The chat-template prompt for one instruction, with the point block and, when `image_tokens` > 0, an image
        block of that many placeholders."""
        if not getattr(self.tokenizer, "chat_template", None):
            name = self.tokenizer.name_or_path
            raise ValueError(f"tokenizer {name!r} has no chat template; set tokenizer.chat_template")
        block = POINT_START + POINT_PATCH * self.point_encoder.num_tokens + POINT_END
        if image_tokens > 0:
            start, patch, end = self.IMAGE_BLOCK
            block += start + patch * image_tokens + end
        messages = [{"role": "user", "content": f"{block}\n{instruction}"}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(self, prompts: list[str], points: torch.Tensor, images=None, projections=None) -> PolicyInputs:
        """Instructions + clouds (B, N, C>=point_dims) [+ uint8 images (B, H, W, 3), or a list with None for rows
        without one] [+ each row's (3, 4) `data3d.Camera.image_projection` or None] -> left-padded PolicyInputs on
        the CPU."""
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.dim() != 3 or points.shape[0] != len(prompts):
            raise ValueError(f"points must be (B={len(prompts)}, N, C), got {tuple(points.shape)}")
        has_image, pixels, grid = self._prepare_images(images, len(prompts))
        texts = [self.prompt_text(p, n) for p, n in zip(prompts, self._image_tokens(has_image, grid))]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        projections = image_projections(projections, has_image)
        return PolicyInputs(
            enc["input_ids"], enc["attention_mask"].long(), points, has_image, pixels, grid, projections
        )

    def _image_tokens(self, has_image: torch.Tensor, grid: torch.Tensor | None) -> list[int]:
        """Each row's number of image placeholders: the encoder's fixed count with an image, 0 without."""
        return [self.image_encoder.num_tokens if h else 0 for h in has_image.tolist()]

    def _present_images(self, images, batch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(which prompts have an image (B,), those images), after checking them against the prompts and the policy."""
        if images is None:
            return torch.zeros(batch, dtype=torch.bool), []
        if self.image_encoder is None:
            raise ValueError("images were given but this policy has no image encoder (config.image is None)")
        if len(images) != batch:
            raise ValueError(f"{len(images)} images for {batch} prompts")
        has_image = torch.tensor([im is not None for im in images], dtype=torch.bool)
        return has_image, [torch.as_tensor(im) for im in images if im is not None]

    def _prepare_images(self, images, batch: int) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """(which rows have an image, their pixels, no patch grid: every image is resized to one size)."""
        has_image, present = self._present_images(images, batch)
        if not present:
            return has_image, None, None
        return has_image, torch.cat([preprocess_images(im[None], self.config.image) for im in present]), None

    def tokenize_responses(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Response texts -> right-padded ids (B, T) ending in the EOS token, and their mask (B, T)."""
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    # ---- forward -------------------------------------------------------------------------------------

    def visual_features(
        self, inputs: PolicyInputs, patch_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected point tokens (B, G+1, hidden) and image tokens (B_img, P, hidden) or None. `patch_mask` (B, G):
        those point patches enter the point encoder as the reconstruction head's mask token."""
        point_features, image_features, _ = self._visual(inputs, patch_mask)
        return point_features, image_features

    def _visual(self, inputs: PolicyInputs, patch_mask: torch.Tensor | None):
        """`visual_features`, plus the point patches (B, G, k, C) the cloud was grouped into."""
        grad = torch.is_grad_enabled()
        groups, centers = self.point_encoder.group(inputs.points)
        mask_token = None
        if patch_mask is not None:
            if self.recon_head is None:
                raise ValueError("masking point patches needs the reconstruction head (PointVLMConfig.recon_head)")
            mask_token = self.recon_head.mask_token
        # a frozen encoder still passes the mask token its gradient
        with torch.set_grad_enabled(grad and (self.config.train_point_encoder or patch_mask is not None)):
            tokens = self.point_encoder.encode(groups, centers, patch_mask, mask_token)
        image_features = None
        if inputs.images is not None:
            tokens, image_features = self._fuse_image(tokens, centers, inputs)
        return self.point_proj(tokens), image_features, groups

    def _fuse_image(self, tokens: torch.Tensor, centers: torch.Tensor, inputs: PolicyInputs):
        """(point tokens after the cross-attention to the images, projected image tokens (B_img, P, hidden))."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.image_encoder_trains):
            image_tokens, uv = self.image_encoder(inputs.images)
        fused = self.fusion(tokens, centers, image_tokens, uv, inputs.has_image, inputs.projections)
        return fused, self.image_proj(image_tokens)

    def embed(self, inputs: PolicyInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, L, hidden), attention_mask (B, L)) with the visual features at the placeholders."""
        embeds, mask, _, _ = self._embed(inputs)
        return embeds, mask

    def _embed(self, inputs: PolicyInputs, patch_mask: torch.Tensor | None = None):
        """`embed`, plus the projected point tokens (B, G+1, hidden) it placed and the point patches (B, G, k, C)."""
        inputs = inputs.to(self.device)
        embeds = self.llm.get_input_embeddings()(inputs.input_ids)
        point_features, image_features, groups = self._visual(inputs, patch_mask)
        embeds = place_features(embeds, inputs.input_ids == self.token_ids[POINT_PATCH], point_features, "point")
        if image_features is not None:
            embeds = place_features(embeds, inputs.input_ids == self.token_ids[IMAGE_PATCH], image_features, "image")
        elif (inputs.input_ids == self.token_ids[IMAGE_PATCH]).any():
            raise ValueError("prompts hold <image_patch> placeholders but the inputs carry no images")
        return embeds, inputs.attention_mask, point_features, groups

    def reconstruct_patches(self, inputs: PolicyInputs, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ROSS3D's reconstruction, for point patches: the prompts run through the LLM with the patches of
        `patch_mask` (B, G) masked in the point encoder, and the reconstruction head reads each masked patch's points
        from the LLM's last hidden state at its point token. Returns (predicted, true) xyz, each (M, k, 3), M =
        patch_mask.sum(), relative to the patch centres. A pass of its own: the log-probs RL and SFT train on never
        see a masked cloud."""
        patch_mask = patch_mask.to(self.device)
        embeds, mask, _, groups = self._embed(inputs, patch_mask)
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        hidden = self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [B, L, hidden]
        slots = inputs.input_ids.to(self.device) == self.token_ids[POINT_PATCH]  # [B, L], cls token's slot first
        at_patches = hidden[slots].view(len(hidden), -1, hidden.shape[-1])[:, 1:]  # [B, G, hidden]
        return self.recon_head(at_patches[patch_mask]), groups[patch_mask][..., :3]

    def align_logits(self, inputs: PolicyInputs) -> torch.Tensor:
        """The cloud-alignment head's outputs (B, align_dims) from the mean projected point token."""
        point_features, _ = self.visual_features(inputs.to(self.device))
        return self._align(point_features)

    def _align(self, point_features: torch.Tensor) -> torch.Tensor:
        if self.align_head is None:
            raise ValueError("this policy has no alignment head (PointVLMConfig.align_dims is 0)")
        return self.align_head(point_features.mean(dim=1))

    def logprobs(
        self,
        inputs: PolicyInputs,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        align: bool = False,
        chunk: int = 0,
        expand: torch.Tensor | None = None,
        min_new_tokens: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (B, T) of the responses after the prompts under softmax(logits / temperature), 0 where
        masked. Give RL the sampling temperature, so that these are the log-probs of the policy that sampled. With
        `align`, also `align_logits` from the same point-encoder pass. `chunk` > 0 scores that many response tokens
        at a time from the LLM's last hidden states (`token_logprobs`): the same values without a float32
        (B, T, vocabulary) logits tensor. `expand` (R,): response r answers prompt `expand[r]` of `inputs`, whose clouds
        and images are then encoded, and whose prefix runs through the LLM, once however many of the responses share
        them (G samples of one prompt). `min_new_tokens`: the responses were drawn with the stop tokens suppressed
        before that position (`rollout.min_new_tokens`); their log-probs are of that distribution, as the rollout
        engines record them."""
        embeds, mask, point_features, _ = self._embed(inputs)
        response_ids, response_mask = response_ids.to(self.device), response_mask.to(self.device).long()
        rows = len(expand) if expand is not None else embeds.shape[0]
        if response_ids.shape[0] != rows or response_ids.shape != response_mask.shape:
            raise ValueError(
                f"responses {tuple(response_ids.shape)} / mask {tuple(response_mask.shape)} do not match "
                f"{rows} prompts (use inputs.repeat_interleave(G) for G samples per prompt)"
            )
        if expand is not None:
            expand = expand.to(self.device)
            point_features = point_features[expand]
        suppress = (min_new_tokens, self.stop_ids)
        logprobs = response_logprobs(
            self.llm, embeds, mask, expand, response_ids, response_mask, temperature, chunk, suppress
        )
        logprobs = logprobs * response_mask
        return (logprobs, self._align(point_features)) if align else logprobs

    @torch.no_grad()
    def generate(
        self,
        inputs: PolicyInputs,
        num_return_sequences: int = 1,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> Generation:
        """Sample G responses per prompt (`sample_responses`: the prompt's prefix is shared by its G samples); their
        log-probs are those of softmax(logits / temperature), before top-p and before the stop tokens are suppressed
        for the first `min_new_tokens` tokens (greedy decoding: of the raw logits).

        `seed` seeds torch's global generator (the draws are torch.multinomial on it, as in transformers)."""
        embeds, mask = self.embed(inputs)
        if seed is not None:
            torch.manual_seed(seed)
        ids, logprobs = sample_responses(
            self.llm,
            embeds,
            mask,
            num_return_sequences,
            do_sample,
            temperature,
            top_p,
            max_new_tokens,
            min_new_tokens,
            self.stop_ids,
            self.tokenizer.pad_token_id,
        )  # [B x G, T]
        mask = stop_mask(ids, self.stop_ids)
        logprobs = logprobs * mask
        kept = ids.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(kept, skip_special_tokens=True)
        return Generation(ids, mask, logprobs, texts)

    # ---- weights -------------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (what the learner publishes to rollout workers)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], share: bool = False) -> None:
        """Install the trainable tensors (exactly `trainable_state_dict`'s names). With `share`, a parameter takes a
        given tensor's memory instead of a copy of it (one of the same dtype, shape and device): a rollout worker's
        object-store views, so that a node holds one copy of a version however many workers read it. Shared tensors
        must never be written afterwards (inference only)."""
        load_trainable_state(self, state, share)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        (directory / "llm").mkdir(parents=True, exist_ok=True)
        if self.config.llm_mode == "lora":
            base = self.llm.get_base_model()
            base.save_pretrained(directory / "llm", state_dict=merged_lora_state(base))
        else:
            self.llm.save_pretrained(directory / "llm")
        self.tokenizer.save_pretrained(directory / "llm")
        if isinstance(self.image_encoder, HFImageEncoder):
            self.image_encoder.tower.save_pretrained(directory / "image_tower")
        save_file(vision_state(self, VISION_PARTS), str(directory / "vision.safetensors"))
        (directory / "pointvlm.json").write_text(json.dumps(self.config.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides) -> "PointVLM":
        """Load a saved policy; `overrides` replace saved config fields (e.g. llm_mode="lora" to train an adapter
        on a saved full model: saved LLM weights are always merged, so any mode can start from them)."""
        directory = Path(directory)
        for name in ("pointvlm.json", "vision.safetensors", "llm/config.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name}: missing; not a PointVLM directory")
        saved = json.loads((directory / "pointvlm.json").read_text())
        config = PointVLMConfig.from_dict({**saved, **overrides})
        model = _backbone_class(cls, directory / "llm")._with_saved_backbone(directory, config)
        load_vision_state(model, directory / "vision.safetensors", VISION_PARTS, ADDABLE)
        return model

    @classmethod
    def _with_saved_backbone(cls, directory: Path, config: PointVLMConfig) -> "PointVLM":
        """A policy over the LLM (and HF vision tower) of a saved directory, before its vision state is loaded."""
        from transformers import AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_pretrained(directory / "llm", dtype=LLM_DTYPES[config.llm_dtype])
        tower = None
        if config.image is not None and config.image.kind == "hf":
            tower = load_vision_tower(directory / "image_tower")
        return cls(config, llm, load_tokenizer(directory / "llm"), tower)

    @classmethod
    def from_components(
        cls, llm_dir: str | Path, config: PointVLMConfig, point_checkpoint: str | Path | None = None
    ) -> "PointVLM":
        """A fresh policy from a local HF causal LM directory (+ an optional Point-BERT / PointLLM / ULIP
        checkpoint for the point encoder, and PointLLM's projector when its shapes fit)."""
        from transformers import AutoModelForCausalLM

        if (backbone := _backbone_class(cls, llm_dir)) is not cls:
            return backbone.from_components(llm_dir, config, point_checkpoint)
        tokenizer = load_tokenizer(llm_dir)
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=LLM_DTYPES[config.llm_dtype])
        tower = None
        if config.image is not None and config.image.kind == "hf":
            if not config.image.hf_dir:
                raise ValueError("PointVLMConfig.image.kind='hf' needs image.hf_dir (a local vision model directory)")
            tower = load_vision_tower(config.image.hf_dir)
            config = replace(config, image=hf_image_config(tower, config.image, config.image.hf_dir))
        model = cls(config, llm, tokenizer, tower)
        if point_checkpoint is not None:
            load_point_checkpoint(point_checkpoint, model.point_encoder, model.point_proj)
        return model


def _backbone_class(cls: type, llm_dir: str | Path) -> type:
    """The policy class for an LLM folder: `QwenVLPointVLM` (policies/qwen_vl.py) for a Qwen-VL one."""
    from policies.qwen_vl import QwenVLPointVLM, is_qwen_vl

    return QwenVLPointVLM if cls is PointVLM and is_qwen_vl(llm_dir) else cls
