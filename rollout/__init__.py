"""Rollout: sample G outputs per prompt from the current policy, tagged with the policy version that produced them.

Engines are `hf` (transformers `generate`, the CPU default) and `vllm` (prompt embeddings on GPUs); Ray actors host them.
"""

from rollout.batching import policy_inputs
from rollout.engine import (
    RolloutBatch,
    RolloutEngine,
    SamplingConfig,
    check_version_order,
    concat_batches,
    split_evenly,
)
from rollout.hf_engine import HFEngine
from rollout.vllm_engine import VLLMEngine
from rollout.worker import (
    BACKENDS,
    RolloutWorker,
    gather,
    generate_on_workers,
    make_engine,
    make_rollout_workers,
)

__all__ = [
    "BACKENDS",
    "HFEngine",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutWorker",
    "SamplingConfig",
    "VLLMEngine",
    "check_version_order",
    "concat_batches",
    "gather",
    "generate_on_workers",
    "make_engine",
    "make_rollout_workers",
    "policy_inputs",
    "split_evenly",
]
