"""Where each role's torch modules live and in which dtype: the one place that decides it for the learner, the rollout
workers, the reference model and evaluation.

The precision contract (`policy.dtype` is the LLM's compute dtype in every role; the encoders always compute in
float32):
- rollout, reference, evaluation: the LLM's weights are stored in `policy.dtype`;
- learner (and its reference): under FSDP2 the weights are float32 masters, and the LLM's decoder layers compute in
  `policy.dtype` through FSDP2's `MixedPrecisionPolicy` (rl/runtime/sharding.py); DDP trains only float32 weights (a float32
  LLM, or LoRA adapters, which peft keeps in float32). Stored in bfloat16, a weight of scale 0.02 cannot take an AdamW step of
  1e-5 (bfloat16's spacing there is 1.2e-4): the update rounds away and the weight never moves.
Rollout engines decode with a KV cache and the learner scores in one full pass; in float32 those agree to ~1e-6, in
bfloat16 they do not (mean |delta log-prob| 0.0055 on a 1024-wide model), so the learner recomputes the old
log-probs itself wherever the rollout's arithmetic may differ from its own (`rl.config.recomputes_old_logprobs`).

Devices: a role runs on the GPU that Ray assigned to its process, else on the CPU. Ray sets CUDA_VISIBLE_DEVICES
to an actor's own GPUs, while Ray Train shows each worker every GPU of its node, so the assigned id is looked up
among the visible ones. A process that Ray gave a GPU but whose torch sees none is refused in one line rather than
left to run on the CPU beside an idle GPU. `device=` overrides the choice (tests inject `meta`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from policies.inputs import LLM_DTYPES

ROLES = ("learner", "rollout", "reference", "evaluation")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: choose one of {ROLES}")


def role_device(
    role: str, assigned: Sequence[str | int], visible: Sequence[str] | None, cuda_devices: int
) -> torch.device:
    """The device of `role` in a process that Ray assigned the accelerator ids `assigned` (`ray.get_gpu_ids()`),
    where CUDA_VISIBLE_DEVICES lists `visible` (None: unset) and torch sees `cuda_devices` CUDA devices."""
    _check_role(role)
    if not assigned:
        return torch.device("cpu")
    if cuda_devices == 0:
        raise RuntimeError(
            f"the {role} was given GPU {', '.join(map(str, assigned))} by Ray, but torch sees no CUDA device "
            f"(torch {torch.__version__} built {'without' if torch.version.cuda is None else 'with'} CUDA): "
            "install a CUDA build of torch==2.13.0 on this node, or give the role no GPUs"
        )
    ids = [str(i) for i in (visible or [])]
    index = ids.index(str(assigned[0])) if str(assigned[0]) in ids else 0
    if index >= cuda_devices:
        raise RuntimeError(f"the {role} was given GPU {assigned[0]}, but torch sees only {cuda_devices} CUDA devices")
    return torch.device("cuda", index)


def process_device(role: str, device: str | torch.device | None = None) -> torch.device:
    """`role_device` for this process (a Ray actor or Ray Train worker; outside Ray: the CPU), or `device` when
    given. The chosen CUDA device becomes the current one, so that kernels and caches land there."""
    _check_role(role)
    if device is not None:
        return torch.device(device)
    import ray

    assigned = ray.get_gpu_ids() if ray.is_initialized() else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    chosen = role_device(
        role, assigned, None if visible is None else visible.split(","), torch.cuda.device_count() if assigned else 0
    )
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


def stored_llm_dtype(compute_dtype: str, sharded: bool) -> str:
    """The dtype a role keeps the LLM's weights in. Sharded by FSDP2 (the learner, and its reference, under
    `learner.strategy=fsdp2`): float32, cast to `compute_dtype` for each layer's compute, so that AdamW updates
    float32 masters. Otherwise `compute_dtype` itself (rollout, evaluation; a DDP learner only trains LoRA adapters,
    which peft keeps in float32, or a float32 LLM: rl.config_loading refuses the rest)."""
    if compute_dtype not in LLM_DTYPES:
        raise ValueError(f"unknown LLM dtype {compute_dtype!r}: choose one of {tuple(LLM_DTYPES)}")
    return "float32" if sharded else compute_dtype


def move_to(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module.to(device)` for every parameter and buffer that holds memory; meta tensors (a vLLM worker's decoder,
    which vLLM serves: rollout.vllm_engine.drop_served_weights) stay as they are, where `Module.to` would refuse
    them. A rollout worker moves its policy after its engine is built, so that vLLM sizes its memory on a GPU that
    the torch copy of the LLM never occupied."""
    # Module.to's own conversion (tied weights stay tied), told to leave meta tensors alone
    module._apply(lambda tensor: tensor if tensor.is_meta else tensor.to(device))
    return module
