"""FSDP2 for the learner (`learner.strategy=fsdp2`): the policy sharded per LLM decoder layer and then as a whole, its
weights gathered whole for the rollout workers and the final export, and sharded checkpoints that every rank writes
(the gradient clipping over shards is `rl.algorithms.update.clip_gradients`). Plus the options that either strategy can use: activation checkpointing,
and the whole-tensor CPU copy of the trainable weights that the controller publishes.

torch 2.13 APIs used: `torch.distributed.fsdp.fully_shard`, `register_fsdp_forward_method`, `MixedPrecisionPolicy`;
`torch.distributed.checkpoint.save/load` (DCP) with `torch.distributed.checkpoint.state_dict.get_state_dict`,
`set_state_dict` and `get_model_state_dict(options=StateDictOptions(full_state_dict=True, cpu_offload=True))`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from policies.hf_llm import base_llm


def decoder_layers(base: nn.Module) -> list[nn.Module]:
    """The plain HF model's repeated blocks (`policies.hf_llm.base_llm`): the modules of the classes its
    `_no_split_modules` names (Qwen2DecoderLayer, ...), the unit that transformers itself never splits across devices."""
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__}: no decoder layers to shard (_no_split_modules: {sorted(names)})")
    return layers


def shard_policy(policy: nn.Module, device: torch.device, world: int, compute_dtype: str = "float32") -> None:
    """FSDP2 in place: each LLM decoder layer its own group (gathered only while it runs), then the policy root
    (encoders, projectors, embeddings, head). The parameters stay as stored (the learner's float32 masters,
    `policies.roles.stored_llm_dtype`); with `compute_dtype` below float32 the decoder layers are gathered and
    compute in it and reduce their gradients in float32, while the root computes in float32 (the encoders as in
    every role; the embeddings and output head too, which keeps the log-softmax over the vocabulary exact)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    from policies.inputs import LLM_DTYPES

    if device.type == "cuda":
        torch.cuda.set_device(device)
    policy.to(device)
    mesh = init_device_mesh(device.type, (world,))
    layer_precision = (
        MixedPrecisionPolicy(param_dtype=LLM_DTYPES[compute_dtype], reduce_dtype=torch.float32)
        if compute_dtype != "float32"
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(base_llm(policy.llm, policy.config.llm_mode)):
        fully_shard(layer, mesh=mesh, mp_policy=layer_precision)
    fully_shard(policy, mesh=mesh)
    # the learner scores with policy.logprobs (and reconstruct_patches), not forward: FSDP2's hooks (gather the root's
    # shards before, reshard and reduce gradients after) run only around the methods registered here
    register_fsdp_forward_method(policy, "logprobs")
    register_fsdp_forward_method(policy, "reconstruct_patches")


def enable_activation_checkpointing(policy: nn.Module) -> None:
    """Each LLM decoder layer recomputed in backward (transformers' own checkpointing, non-reentrant, so that it
    composes with DDP and FSDP2 and needs no input that requires grad)."""
    llm = base_llm(policy.llm, policy.config.llm_mode)
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # its name before transformers 5.2x renamed it; the vLLM lane's venv pins one of those
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def published_state(policy: nn.Module, rank: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The trainable tensors whole and on the CPU (what the rollout workers load), one at a time, for
    `WeightSync.put` to stream into the object store. With FSDP2 each is gathered from the shards as it comes, a
    collective: every rank must run the generator to its end, in the same order; only rank 0 yields (copies to the
    CPU), every other rank drops each gathered tensor at once and yields nothing."""
    from torch.distributed.tensor import DTensor

    for name, param in policy.named_parameters():
        if param.requires_grad:
            tensor = param.detach()
            whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            if rank == 0:
                yield name, whole.cpu()


def save_sharded(policy: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Every rank writes its shards of the policy and the optimizer state (DCP); rank 0 also writes the metadata.
    Ray Train gathers each rank's files into one checkpoint directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(policy, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def load_sharded(policy: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """`save_sharded` read back, each rank reading the pieces of its own shards (any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(policy, optimizer)
    dcp.load({"model": model_state}, checkpoint_id=str(directory))
    # AdamW keeps no state for a parameter that never had a gradient (the alignment head in RL), while a fresh
    # optimizer's state dict has zeros for every one (which is what AdamW starts from): those may be missing
    dcp.load(
        {"optimizer": optimizer_state},
        checkpoint_id=str(directory),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    set_state_dict(policy, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def full_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The whole policy state on rank 0's CPU (other ranks get an empty dict); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def move_learner(
    policy: nn.Module, optimizer: torch.optim.Optimizer, reference: nn.Module | None, device: torch.device
) -> None:
    """The learner's parameters (FSDP2's shards as they are sharded), AdamW's moments and the reference onto
    `device`. A colocated learner moves them to the CPU before the rollout engines on its GPUs wake, freeing the CUDA
    cache, and back after they sleep (rl.runtime.controller.EngineTurns says the order)."""
    policy.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:  # AdamW's step counter stays where it is
                state[key] = value.to(device)
    if reference is not None:
        reference.to(device)
    if device.type == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()
