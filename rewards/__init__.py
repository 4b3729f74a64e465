"""Rewards for Point-VLM outputs: parse a model's JSON answer into its six fields with character spans and score each
field (IoU 2D/3D, keypoint containment, reprojection consistency, answer, format) exactly as the reward contract says.

Pure numpy + msgspec: no torch, no Ray. `score_batch` is the one implementation behind the in-process, HTTP and Ray
Serve entry points.
"""

from rewards.request import RequestError, RewardRequest, normalize_answer
from rewards.schema import DEFAULT_BINS, DEFAULT_BOUNDS3D, FIELDS, REWARDS, Quant, dequantize, quantize
from rewards.score import score_batch, score_request

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_BOUNDS3D",
    "FIELDS",
    "REWARDS",
    "Quant",
    "RequestError",
    "RewardRequest",
    "dequantize",
    "normalize_answer",
    "quantize",
    "score_batch",
    "score_request",
]
