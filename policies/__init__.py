"""The Point-VLM policy: point ops, a Point-BERT-style encoder, an image encoder, geometry-guided fusion and
projectors in front of any Hugging Face causal LM, with loaders for real checkpoints and a tiny local model.
`PointVLM.prepare` builds prompts, `embed` gives `inputs_embeds`, `logprobs` scores responses, `generate` samples."""

from policies.checkpoints import load_point_checkpoint, read_state_dict
from policies.hf_llm import load_tokenizer
from policies.image_encoder import ImageEncoderConfig, load_vision_tower
from policies.inputs import Generation, PointVLMConfig, PolicyInputs
from policies.point_encoder import PointBertEncoder, PointEncoderConfig
from policies.point_ops import drop_points, farthest_point_sample, gaussian_noise, group_points, knn, mask_groups
from policies.qwen_vl import QwenVLPointVLM
from policies.tiny import build_tiny_policy, build_tiny_qwen_vl, build_tiny_tokenizer, tiny_config, tiny_llm_config
from policies.vlm import SPECIAL_TOKENS, PointVLM

__all__ = [
    "Generation",
    "ImageEncoderConfig",
    "PointBertEncoder",
    "PointEncoderConfig",
    "PointVLM",
    "PointVLMConfig",
    "PolicyInputs",
    "QwenVLPointVLM",
    "SPECIAL_TOKENS",
    "build_tiny_policy",
    "build_tiny_qwen_vl",
    "build_tiny_tokenizer",
    "drop_points",
    "farthest_point_sample",
    "gaussian_noise",
    "group_points",
    "knn",
    "load_point_checkpoint",
    "load_tokenizer",
    "load_vision_tower",
    "mask_groups",
    "read_state_dict",
    "tiny_config",
    "tiny_llm_config",
]
