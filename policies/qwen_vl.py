"""PointVLM over a Qwen-VL checkpoint folder (Qwen2.5-VL or Qwen3-VL): its language model decodes, its own vision tower
makes the image tokens.

What is read from transformers 5.24 (`transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py`):
- The folder (config.json `model_type: qwen2_5_vl`) loads as `Qwen2_5_VLForConditionalGeneration` (through
  `AutoModelForImageTextToText`; `AutoModelForCausalLM` has no entry for it): `.model` is a `Qwen2_5_VLModel` holding
  `.visual` (`Qwen2_5_VisionTransformerPretrainedModel`) and `.language_model` (`Qwen2_5_VLTextModel`, whose
  `embed_tokens` is the input embedding), and `.lm_head` sits beside `.model`. The whole model is the policy's `llm`,
  so that `llm/` stays a Qwen2.5-VL folder that transformers loads as one (vLLM gets its language model alone,
  rollout/vllm_qwen.py); the policy's `image_encoder.tower`
  is the same `visual` module (one set of weights, saved once, inside `llm/`).
- `Qwen2_5_VisionTransformerPretrainedModel.forward(hidden_states, grid_thw)` takes the image processor's flattened
  patches (sum of t*h*w, C * temporal_patch_size * patch_size**2) and each image's `grid_thw`; its `pooler_output`
  is the `Qwen2_5_VLPatchMerger` output, one token per spatial_merge_size**2 patches, already in the language model's
  width (`out_hidden_size`): what `Qwen2_5_VLModel.get_image_features` splits per image and writes over the
  `<|image_pad|>` tokens. Those tokens are our image tokens: they feed the geometry-guided fusion (the point tokens
  attend to them, `policies/fusion.py`) and go to the LLM at `<|vision_start|><|image_pad|>*n<|vision_end|>` as the
  model's own processor writes an image. The merger is the tower's pretrained projector, so `image_proj` is the
  identity here (a fresh MLP would cut the alignment the checkpoint was trained with).
- The image processor is the folder's own (`preprocessor_config.json`, `Qwen2VLImageProcessor`): dynamic resolution,
  each image resized (`smart_resize`) to a multiple of patch_size * merge_size with its aspect kept and its pixel
  count within [min_pixels, max_pixels], so the number of image tokens follows the image's size.

Positions: Qwen2.5-VL's rotary embedding is M-RoPE (`Qwen2_5_VLRotaryEmbedding`: three position components, temporal,
height, width, over `mrope_section` slices of the frequencies). Its own scheme (`Qwen2_5_VLModel.get_rope_index`)
needs `input_ids`, `mm_token_type_ids` and `image_grid_thw`; given `inputs_embeds` alone,
`compute_3d_position_ids` returns None and `Qwen2_5_VLTextModel.forward` uses the token index for all three
components, and a 2-D `position_ids` (B, L) is expanded to the same three equal rows. In `generate` with
`inputs_embeds`, `Qwen2_5_VLForConditionalGeneration._prepare_position_ids_for_generation` finds no input ids, so it
builds the text positions `attention_mask.cumsum(-1) - 1` for all three rows with `rope_deltas` 0, and every step
adds 1. We therefore use text-style positions for every token, visual ones included: `PointVLM.logprobs` passes
(B, L) `position_ids = cumsum(mask) - 1`, which is what HF rollout computes, so learner and rollout agree exactly
(tested). vLLM gets the same positions: it serves the language model alone, exported as a plain `Qwen2ForCausalLM`
(rollout/vllm_qwen.py, which says why not the Qwen2.5-VL folder itself), whose 1-D positions for an unpadded prompt of
embeddings are `arange(len)`, then +1 per decoded token; with all three rows equal M-RoPE is that 1-D RoPE (the
export's logits equal this model's bit for bit, `tests/test_policies_qwen_vl.py`), and vLLM's sampled log-probs equal
`PointVLM.logprobs` to < 1e-4 (`tests/test_vllm_qwen.py`, the vLLM lane). M-RoPE with the image grid
would need the grid on every path (HF generate, vLLM prompt_embeds), and neither takes one with embeddings; text
positions are also what Qwen2.5-VL uses for every non-image token, and with all three rows equal M-RoPE is plain
1-D RoPE. What this gives up: the image tokens do not get their 2-D grid positions (the fine-tuning learns with that).

Qwen3-VL (`model_type: qwen3_vl`, transformers 5.24 `models/qwen3_vl/modeling_qwen3_vl.py`) takes the same code path;
what differs, and what we chose:
- Same layout: `Qwen3VLForConditionalGeneration` (also under `AutoModelForImageTextToText`) holds `.model.visual`
  (`Qwen3VLVisionModel`), `.model.language_model` (`Qwen3VLTextModel`) and `.lm_head`; same image processor class
  (with its own sizes, read from the folder), same vision tokens. The tower has the same
  `forward(hidden_states, grid_thw)` and its `pooler_output` is again the merger's output in the LLM's width, in the
  same merge-window order (no window attention; learned position embeddings resampled to each grid, 2-D RoPE).
- DeepStack: the tower also returns `deepstack_features`, the outputs of extra mergers after intermediate blocks
  (`deepstack_visual_indexes`, [8, 16, 24] of 27 blocks by default), which `Qwen3VLModel.forward` hands to the
  language model as `deepstack_visual_embeds` + `visual_pos_masks`: `Qwen3VLTextModel._deepstack_process` adds them to
  the hidden states at the image tokens after its first len(...) decoder layers. That happens only when the model
  encodes `pixel_values` itself; given `inputs_embeds` alone there is none. We give embeddings only, on all three
  paths, so they agree: the learner and HF `generate` run the model on `inputs_embeds`, and vLLM's `prompt_embeds`
  cannot carry per-layer additions (vLLM 0.32's own `Qwen3VLForConditionalGeneration` fills its deepstack buffer in
  `embed_input_ids`, from its own encoder's multimodal embeddings, never for a prompt of embeddings; our Qwen3
  export has no such hook). Threading them through the learner and HF alone would make rollout and learner
  log-probs differ. What is given up: the pretrained LLM expects those additions at its image tokens (in its first
  layers, one per deepstack merger), so its image tokens start off the distribution it was trained on and the
  fine-tuning has to adapt to that; the tower still computes the deepstack mergers, whose outputs are dropped (so
  they get no gradient even when the tower trains: the learner's DDP runs with `find_unused_parameters`).
- Positions: Qwen3-VL's M-RoPE is interleaved (`Qwen3VLTextRotaryEmbedding.recomposition_frequencies`: frequency i
  takes the height row when i % 3 == 1, the width row when i % 3 == 2, below 3 * their `mrope_section`, else the
  temporal row), where Qwen2.5-VL cuts contiguous sections; with three equal rows both are 1-D RoPE. A (B, L)
  `position_ids` becomes four equal rows (the first, text positions, for the attention mask), and
  `_prepare_position_ids_for_generation` given embeddings builds `cumsum(mask) - 1` on every row with `rope_deltas`
  0: the learner's positions, as for Qwen2.5-VL (tested: HF rollout, the Qwen3 export's logits bit for bit, vLLM).
- The language model is Qwen3's decoder (q/k RMSNorm per head, its own `head_dim`, `attention_bias`): vLLM gets it
  as a `Qwen3ForCausalLM` (`QWEN_VL_FAMILIES`).

The camera-guided fusion (`fusion="camera"`, policies/fusion.py) works here as on any tower: the point tokens attend
to the tower's merged image tokens, biased by where each group projects. Qwen3-VL-MoE (`qwen3_vl_moe`) is not taken:
its language model is a MoE decoder, not exported or tested. A policy folder from real checkpoints: `pointrl init`
(rl/cli/init.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from policies.checkpoints import load_point_checkpoint
from policies.hf_llm import load_tokenizer
from policies.image_encoder import ImageEncoderConfig
from policies.inputs import LLM_DTYPES, PointVLMConfig, PolicyInputs
from policies.vlm import IMAGE_PATCH, PointVLM

# The Qwen-VL families (config.json `model_type`), each with the text model its language model is once its M-RoPE rows
# are equal (what vLLM serves, rollout/vllm_qwen.py) and the fields of that text model's config beyond Qwen2's
QWEN_VL_FAMILIES = {
    "qwen2_5_vl": ("Qwen2ForCausalLM", ()),
    "qwen3_vl": ("Qwen3ForCausalLM", ("head_dim", "attention_bias")),
}
QWEN_VL_TYPES = tuple(QWEN_VL_FAMILIES)
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"


def is_qwen_vl(directory: str | Path) -> bool:
    """Whether `directory` is an HF folder of a Qwen-VL model (config.json `model_type` in `QWEN_VL_TYPES`)."""
    config = Path(directory) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in QWEN_VL_TYPES


def load_qwen_vl(directory: str | Path, dtype: str):
    """(the whole model, `Qwen2_5_VLForConditionalGeneration` or `Qwen3VLForConditionalGeneration`, the folder's
    image processor)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    directory = Path(directory)
    if not (directory / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{directory}: no preprocessor_config.json (the Qwen-VL image processor)")
    llm = AutoModelForImageTextToText.from_pretrained(directory, dtype=LLM_DTYPES[dtype])
    return llm, AutoImageProcessor.from_pretrained(directory)


def qwen_image_config(tower: nn.Module, processor) -> ImageEncoderConfig:
    """The image config of a Qwen-VL tower: one image token covers patch_size * merge_size pixels square, its
    width is the merger's output (the LLM's hidden size); normalisation is the processor's."""
    cfg = tower.config
    return ImageEncoderConfig(
        kind="qwen_vl",
        image_size=0,  # dynamic resolution: the processor's min_pixels / max_pixels bound each image
        patch_size=cfg.patch_size * cfg.spatial_merge_size,
        width=cfg.out_hidden_size,
        mean=tuple(processor.image_mean),
        std=tuple(processor.image_std),
    )


class QwenVisionEncoder(nn.Module):
    """The Qwen-VL tower: processor patches + grid_thw -> per image its merged tokens (P_i, width) and their
    centres (P_i, 2) in [0, 1]^2 (the merged grid is row-major over (h / merge, w / merge), as the processor orders
    the patches in merge windows)."""

    def __init__(self, tower: nn.Module, config: ImageEncoderConfig):
        super().__init__()
        self.tower = tower
        self.config = config
        self.merge = tower.spatial_merge_size

    def tokens_per_image(self, grid_thw: torch.Tensor) -> list[int]:
        return (grid_thw.prod(-1) // self.merge**2).tolist()

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # a Qwen3-VL tower's deepstack_features are left out: no path can give them to vLLM (module docstring)
        merged = self.tower(pixels.to(self.tower.dtype), grid_thw=grid_thw).pooler_output.float()
        out = []
        for tokens, (t, h, w) in zip(merged.split(self.tokens_per_image(grid_thw)), grid_thw.tolist()):
            rows, cols = h // self.merge, w // self.merge
            c = lambda n: (torch.arange(n, dtype=torch.float32, device=pixels.device) + 0.5) / n  # noqa: E731
            v, u = torch.meshgrid(c(rows), c(cols), indexing="ij")
            out.append((tokens, torch.stack([u.flatten(), v.flatten()], dim=-1).repeat(t, 1)))
        return out


class QwenVLPointVLM(PointVLM):
    """`PointVLM` whose `llm` is a whole Qwen-VL model. `PointVLM.from_components(qwen_dir, config)` and
    `PointVLM.from_pretrained(saved_dir)` build this class when the LLM folder is a Qwen-VL one; `config.image`
    becomes the tower's (`kind="qwen_vl"`, frozen unless `train_image_encoder`), or stays None for points only."""

    def __init__(self, config: PointVLMConfig, llm: nn.Module, tokenizer, image_tower=None, image_processor=None):
        missing = [t for t in (VISION_START, IMAGE_PAD, VISION_END) if t not in tokenizer.get_vocab()]
        if config.image is not None and missing:
            raise ValueError(f"a Qwen-VL policy with images needs the tokens {missing} in its tokenizer")
        if config.image is not None and image_processor is None:
            raise ValueError("a Qwen-VL policy with images needs its image processor (preprocessor_config.json)")
        super().__init__(config, llm, tokenizer, image_tower if image_tower is not None else llm.model.visual)
        self.image_processor = image_processor
        if config.image is not None:
            self.image_proj = nn.Identity()  # the merger already projects into the LLM (module docstring)
            self.token_ids[IMAGE_PATCH] = tokenizer.convert_tokens_to_ids(IMAGE_PAD)  # where _embed writes them

    def _image_encoder(self, image: ImageEncoderConfig, tower: nn.Module | None) -> nn.Module:
        if image.kind != "qwen_vl":
            raise ValueError(f"a Qwen-VL policy's image.kind is 'qwen_vl', got {image.kind!r}")
        return QwenVisionEncoder(tower, image)

    IMAGE_BLOCK = (VISION_START, IMAGE_PAD, VISION_END)

    def _image_tokens(self, has_image: torch.Tensor, grid: torch.Tensor | None) -> list[int]:
        """Each image goes through the folder's processor at its own resolution, so a row's image block holds as many
        tokens as its image gives (its grid_thw)."""
        counts = iter([] if grid is None else self.image_encoder.tokens_per_image(grid))
        return [next(counts) if h else 0 for h in has_image.tolist()]

    def _prepare_images(self, images, batch: int):
        has_image, present = self._present_images(images, batch)
        if not present:
            return has_image, None, None
        for im in present:
            if im.dim() != 3 or im.shape[-1] != 3 or im.dtype != torch.uint8:
                raise ValueError(f"images must be uint8 (H, W, 3), got {im.dtype} {tuple(im.shape)}")
        out = self.image_processor(
            images=[im.numpy() for im in present], return_tensors="pt", input_data_format="channels_last"
        )
        return has_image, out["pixel_values"].float(), out["image_grid_thw"].long()

    def _fuse_image(self, tokens: torch.Tensor, centers: torch.Tensor, inputs: PolicyInputs):
        """Each image's tokens (their number follows its size) meet the point tokens of its row in the fusion; the
        image features come back as (sum of P_i, hidden), row after row, for `place_features`."""
        if inputs.image_grid_thw is None:
            raise ValueError("the images carry no image_grid_thw: prepare them with this policy's `prepare`")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.image_encoder_trains):
            per_image = self.image_encoder(inputs.images, inputs.image_grid_thw)
        rows = torch.nonzero(inputs.has_image).flatten()
        if rows.numel() != len(per_image):
            raise ValueError(f"{len(per_image)} images for {rows.numel()} samples with an image")
        one = torch.ones(1, dtype=torch.bool, device=tokens.device)
        projections = [None] * len(per_image) if inputs.projections is None else inputs.projections[:, None]
        fused = [
            self.fusion(tokens[r : r + 1], centers[r : r + 1], image[None], uv, one, projection)
            for r, (image, uv), projection in zip(rows.tolist(), per_image, projections)
        ]
        tokens = tokens.index_put((rows,), torch.cat(fused))
        return tokens, self.image_proj(torch.cat([image for image, _ in per_image]))

    # ---- folders -------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """`PointVLM.save_pretrained`; `llm/` is a whole Qwen-VL folder, the image processor included."""
        super().save_pretrained(directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(Path(directory) / "llm")

    @classmethod
    def _with_saved_backbone(cls, directory: Path, config: PointVLMConfig) -> "QwenVLPointVLM":
        llm, processor = load_qwen_vl(directory / "llm", config.llm_dtype)
        return cls(config, llm, load_tokenizer(directory / "llm"), image_processor=processor)

    @classmethod
    def from_components(
        cls, llm_dir: str | Path, config: PointVLMConfig, point_checkpoint: str | Path | None = None
    ) -> "QwenVLPointVLM":
        """A fresh policy from a Qwen-VL folder (its tower replaces whatever `config.image` asked for, unless
        that is None) and an optional point-encoder checkpoint."""
        llm, processor = load_qwen_vl(llm_dir, config.llm_dtype)
        if config.image is not None:
            config = replace(config, image=qwen_image_config(llm.model.visual, processor))
        model = cls(config, llm, load_tokenizer(llm_dir), image_processor=processor)
        if point_checkpoint is not None:
            load_point_checkpoint(point_checkpoint, model.point_encoder, model.point_proj)
        return model
