"""What every algorithm's update shares, on one learner rank and without Ray: the rank's state (`Learner`), one RL
step over a shard (`learn_step`), gradient accumulation whose windows never cross an epoch, micro-batches, the
no-gradient log-prob passes (old policy, reference), the optional patch reconstruction loss, and the counts summed
over ranks that keep a step's mean over every rank's items. The algorithms (rl/algorithms/*.py) call these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from policies import PointVLM
from policies.reconstruction import random_patch_mask
from rl.algorithms.batch import LearnBatch
from rl.algorithms.losses import patch_reconstruction_loss
from rl.config import Config


class ResponseScorer(torch.nn.Module):
    """DDP synchronizes gradients of what flows through `forward`; for a policy that is its response log-probs
    (`chunk`: learner.logprob_chunk) and the outputs of its training heads."""

    def __init__(self, policy: PointVLM, chunk: int = 0):
        super().__init__()
        self.policy, self.chunk = policy, chunk

    def forward(
        self,
        inputs,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float = 1.0,
        align: bool = False,
        recon: tuple | None = None,
        expand: torch.Tensor | None = None,
        min_new_tokens: int = 0,
    ) -> tuple[torch.Tensor, dict]:
        """(response log-probs, extras). With `align`, extras["align"] is the cloud-alignment head's outputs (from
        the same encoder pass); with `recon` = (prompts, patch_mask), extras["recon"] the (predicted, true) masked
        patches of `PointVLM.reconstruct_patches` (a prompt-only pass of its own). `expand`, `min_new_tokens`: see
        `PointVLM.logprobs`."""
        out = self.policy.logprobs(
            inputs, response_ids, response_mask, temperature, align, self.chunk, expand, min_new_tokens
        )
        logprobs, extras = (out[0], {"align": out[1]}) if align else (out, {})
        if recon is not None:
            extras["recon"] = self.policy.reconstruct_patches(*recon)
        return logprobs, extras


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The LR multiplier of RL step `step` (0-based) of `total`: linear warm-up over the first `warmup` RL steps, then
    constant, cosine or linear decay to 0 over the remaining ones."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1.0 - progress}[schedule]


def make_optimizer(params: list[torch.nn.Parameter], cfg: Config) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW over the trainable tensors and its LR schedule, which `learn_step` advances once per RL step (however
    many optimizer steps the step makes), so that the schedule follows `run.steps` whatever the batch shapes."""
    learner = cfg.learner
    optimizer = torch.optim.AdamW(params, lr=learner.lr, betas=tuple(learner.betas), weight_decay=learner.weight_decay)
    scheduler = LambdaLR(optimizer, lambda s: lr_factor(s, cfg.run.steps, learner.warmup_steps, learner.schedule))
    return optimizer, scheduler


class Accumulator:
    """Gradient accumulation whose windows never cross an epoch. `epoch(n)` opens an epoch of n micro-batches;
    `backward(loss)` adds one micro-batch's gradient and, when its window of `grad_accum` micro-batches (fewer at the
    end of an epoch) is complete, clips the sum and steps the optimizer. Each loss is divided by the size of its own
    window, so every optimizer step follows the mean gradient of the micro-batches it saw."""

    def __init__(self, optimizer: torch.optim.Optimizer, params, grad_accum: int, grad_clip: float):
        self.optimizer, self.params = optimizer, list(params)
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.grad_norms: list[float] = []  # one per optimizer step (learn_step clears it each RL step)
        self.done = self.size = 0  # micro-batches run in the open epoch, and its length

    def epoch(self, micro_batches: int) -> None:
        if self.done != self.size:
            raise RuntimeError(f"the previous epoch ran {self.done} of its {self.size} micro-batches")
        self.done, self.size = 0, micro_batches

    def backward(self, loss: torch.Tensor) -> None:
        if self.done == self.size:
            raise RuntimeError(f"micro-batch {self.done + 1} of an epoch of {self.size}")
        start = self.done - self.done % self.grad_accum  # the first micro-batch of this one's window
        window = min(self.grad_accum, self.size - start)
        (loss / window).backward()
        self.done += 1
        if self.done == start + window:
            self.grad_norms.append(clip_gradients(self.params, self.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def loss_means(losses: list[dict[str, float]]) -> dict[str, float]:
    """`loss/<key>`: each statistic averaged over every micro-batch of every epoch of the step."""
    return {f"loss/{key}": sum(row[key] for row in losses) / len(losses) for key in losses[0]} if losses else {}


def micro_batches(rows: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, rows))) for start in range(0, rows, size)]


def window_tokens(mask: torch.Tensor, chunks: list[list[int]], grad_accum: int) -> list[float]:
    """algo.loss_agg=token_mean's denominator of each micro-batch: the response tokens of its accumulation window
    (windows of `grad_accum` micro-batches from the epoch's start, as `Accumulator` steps) over the window's length,
    so that once `Accumulator` divides each loss by that length the optimizer step follows the mean over the
    window's tokens."""
    counts = [float(mask[rows].sum()) for rows in chunks]
    windows = [counts[i - i % grad_accum :][:grad_accum] for i in range(len(counts))]
    return [sum(window) / len(window) for window in windows]


def answered_prompts(prompts, owners: list[int]) -> tuple:
    """The prompts that responses answer, each once (`prompts` rows `owners`, deduplicated), and each response's
    index into them: `PointVLM.logprobs(..., expand=)` then encodes each cloud once for its G samples."""
    distinct = sorted(set(owners))
    position = {prompt: i for i, prompt in enumerate(distinct)}
    return prompts.select(distinct), torch.tensor([position[o] for o in owners])


def sequence_logprobs(
    policy: PointVLM,
    prompts,
    owners: list[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    size: int,
    temperature: float = 1.0,
    chunk: int = 0,
    min_new_tokens: int = 0,
) -> torch.Tensor:
    """Per-token log-probs of every response (response r answers prompt `owners[r]`) without gradients, in
    micro-batches (`min_new_tokens`: `PointVLM.logprobs`)."""
    parts = []
    with torch.no_grad():
        for rows in micro_batches(len(ids), size):
            answered, expand = answered_prompts(prompts, [owners[r] for r in rows])
            parts.append(
                policy.logprobs(
                    answered,
                    ids[rows],
                    mask[rows],
                    temperature,
                    chunk=chunk,
                    expand=expand,
                    min_new_tokens=min_new_tokens,
                )
            )
    return torch.cat(parts)


def reconstruction_request(policy: PointVLM, prompts, weight: float, cfg: Config) -> tuple | None:
    """The scorer's `recon` argument: these prompts with a fresh random patch mask (the learner's seeded torch RNG),
    or None when the reconstruction loss has no `weight` in this run."""
    if weight == 0:
        return None
    return prompts, random_patch_mask(len(prompts), policy.point_encoder.num_tokens - 1, cfg.recon.mask_ratio)


def with_reconstruction(loss: torch.Tensor, info: dict, extras: dict, weight: float) -> tuple[torch.Tensor, dict]:
    """The loss plus `weight` times the patch reconstruction loss, when the scorer computed one."""
    if "recon" not in extras:
        return loss, info
    recon, recon_info = patch_reconstruction_loss(*extras["recon"])
    return loss + weight * recon, {**info, **recon_info}


def on_device(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The batch's tensors where the policy computes (the controller sends them on the CPU)."""
    return [None if t is None else t.to(device) for t in tensors]


def rank_share(count: int, device: torch.device) -> float:
    """count x world / (count summed over the ranks): how much this rank's mean loss must weigh so that the ranks'
    averaged gradient is the mean over all of their items (1 in a single process). Every rank must call it."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    return count * world / max(sum_over_ranks(count, world, device), 1) if world > 1 else 1.0


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """`clip_grad_norm_` that also takes FSDP2's sharded gradients: the total norm is made whole (over every rank's
    shard) before it scales the gradients and is returned."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def sum_over_ranks(count: int, world: int, device: torch.device) -> int:
    """`count` summed over the `world` ranks (a collective when there are several: every rank calls it)."""
    if world == 1:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)  # NCCL reduces only GPU tensors
    torch.distributed.all_reduce(total)
    return int(total)


@dataclass
class Learner:
    """One learner rank's state: the policy it trains, the scorer its losses read log-probs through (the policy,
    wrapped by DDP where DDP synchronizes gradients), the optimizer behind the accumulator and the LR schedule, the
    frozen reference (None when the algorithm needs none) and the number of ranks."""

    policy: PointVLM
    scorer: torch.nn.Module
    accumulator: Accumulator
    scheduler: LambdaLR
    reference: PointVLM | None = None
    world: int = 1


def make_learner(
    policy: PointVLM,
    cfg: Config,
    reference: PointVLM | None = None,
    world: int = 1,
    scorer: torch.nn.Module | None = None,
) -> Learner:
    """A rank's learner over `policy` (sharded or not): AdamW over its trainable tensors, the LR schedule and the
    accumulator. `scorer` defaults to the policy's own `ResponseScorer`; the Ray Train loop passes DDP's wrapper."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, cfg)
    accumulator = Accumulator(optimizer, trainable, cfg.learner.grad_accum, cfg.learner.grad_clip)
    scorer = ResponseScorer(policy, cfg.learner.logprob_chunk) if scorer is None else scorer
    return Learner(policy, scorer, accumulator, scheduler, reference, world)


def learn_step(learner: Learner, algorithm, batch: LearnBatch, cfg: Config) -> dict[str, float]:
    """One RL step of one rank: `algorithm.update` over this rank's shard, then the LR schedule's next step. Returns
    the loss statistics and `learner/*` (grad_norm, the lr this step used, skipped).

    A step where no rank has anything to learn from (the reward service was down, so every sample is missing) never
    reaches the optimizer: AdamW would still move the weights on its stale momentum and weight decay."""
    lr = learner.scheduler.get_last_lr()[0]
    learner.accumulator.grad_norms.clear()
    policy = learner.policy
    skipped = sum_over_ranks(algorithm.learning_rows(batch), learner.world, policy.device) == 0
    stats = {}
    if not skipped:
        policy.train()
        stats = algorithm.update(learner, batch, cfg)
        policy.eval()
    learner.scheduler.step()
    return {
        **stats,
        "learner/grad_norm": max(learner.accumulator.grad_norms, default=0.0),
        "learner/lr": lr,
        "learner/skipped": float(skipped),
    }
