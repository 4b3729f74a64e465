"""The learner: the loop each Ray Train worker runs (DDP or FSDP2, over gloo on CPU and NCCL on GPUs).

Each step it takes its shard of the controller's batch, recomputes the old log-probs, runs `learner.epochs` passes of
micro-batches (AdamW, gradient accumulation and clipping), steps the LR schedule, and rank 0 hands the new trainable
weights to the controller, which pushes them to the rollout workers as the next version. Every `checkpoint.every`
steps a checkpoint goes through `ray.train.report`: DDP's rank 0 writes policy + optimizer + step; with FSDP2
(`rl/sharding.py`) every rank writes its shards (DCP) and the final policy is gathered whole for the export. A
restarted run resumes from the latest. `learn_step` is one step of one rank without Ray, so tests run it in process.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from policies import PointVLM
from rl.batches import LearnBatch, alignment_targets
from rl.config import ALIGN_CATEGORIES, policy_overrides, run_quant
from rl.config_loading import config_from_dict
from rl.losses import (
    clipped_surrogate_loss,
    cloud_alignment_loss,
    dpo_loss,
    kl_penalty,
    masked_sample_sum,
    nll_loss,
    spa_loss,
)
from rl.sharding import (
    clip_gradients,
    enable_activation_checkpointing,
    full_state,
    load_sharded,
    published_state,
    save_sharded,
    shard_policy,
)
from rollout.batching import policy_inputs
from rollout.weight_sync import WeightSync

NEEDS_REFERENCE = ("dpo",)


class ResponseScorer(torch.nn.Module):
    """DDP synchronizes gradients of what flows through `forward`; for a policy that is its response log-probs
    (`chunk`: learner.logprob_chunk)."""

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
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Response log-probs; with `align`, also the cloud-alignment head's outputs (from the same encoder pass)."""
        return self.policy.logprobs(inputs, response_ids, response_mask, temperature, align, self.chunk)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The LR multiplier of RL step `step` (0-based) of `total`: linear warm-up over the first `warmup` RL steps, then
    constant, cosine or linear decay to 0 over the remaining ones."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return {"constant": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1.0 - progress}[schedule]


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> tuple[torch.optim.AdamW, LambdaLR]:
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


def sequence_logprobs(
    policy: PointVLM, inputs, ids: torch.Tensor, mask: torch.Tensor, size: int, temperature: float = 1.0, chunk: int = 0
) -> torch.Tensor:
    """Per-token log-probs of every row without gradients, in micro-batches."""
    with torch.no_grad():
        return torch.cat(
            [
                policy.logprobs(inputs.select(rows), ids[rows], mask[rows], temperature, chunk=chunk)
                for rows in micro_batches(len(ids), size)
            ]
        )


def on_device(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The batch's tensors where the policy computes (the controller sends them on the CPU)."""
    return [None if t is None else t.to(device) for t in tensors]


def policy_gradient_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """GRCA / GRPO (GRCA eqs. 15-16): clipped surrogate over token advantages, several epochs over the batch."""
    inputs = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images).repeat_interleave(
        batch.group_size
    )
    ids, mask, advantages, rollout_logprobs = on_device(
        policy.device, batch.response_ids, batch.response_mask, batch.advantages, batch.rollout_logprobs
    )
    # every log-prob at the sampling temperature, so that the ratio's denominator is the policy that sampled
    temperature, size, chunk = cfg.rollout.temperature, cfg.learner.micro_batch_size, cfg.learner.logprob_chunk
    old = sequence_logprobs(policy, inputs, ids, mask, size, temperature, chunk)
    ref = sequence_logprobs(reference, inputs, ids, mask, size, temperature, chunk) if reference else None
    stats, losses = {"onpolicy/max_abs_logprob_diff": float(((old - rollout_logprobs).abs() * mask).max())}, []
    for _ in range(cfg.learner.epochs):
        chunks = micro_batches(len(ids), size)
        accumulator.epoch(len(chunks))
        for rows in chunks:
            logp = scorer(inputs.select(rows), ids[rows], mask[rows], temperature)
            loss, info = clipped_surrogate_loss(
                logp, old[rows], advantages[rows], mask[rows], cfg.algo.clip_eps, cfg.algo.clip_eps_high
            )
            if ref is not None:
                kl, kl_info = kl_penalty(logp, ref[rows], mask[rows], cfg.algo.kl_beta)
                loss, info = loss + kl, {**info, **kl_info}
            accumulator.backward(loss)
            losses.append({**info, "total": float(loss.detach())})
    return {**stats, **loss_means(losses)}


def target_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """SFT (NLL on the serialized targets, GRCA eq. 5, plus the cloud-alignment loss when sft.align_weight > 0) or
    SPA (clean vs corrupted cloud, SPA eqs. 3-6)."""
    ids, mask = on_device(policy.device, *policy.tokenize_responses(batch.response_texts))
    clouds = batch.samples + (batch.corrupted or [])
    inputs = policy_inputs(policy, clouds, run_quant(cfg), cfg.data.use_images)
    n, losses = len(batch.samples), []
    align = cfg.algo.name == "sft" and cfg.sft.align_weight > 0
    align_targets = on_device(policy.device, *alignment_targets(batch.samples)) if align else None
    for _ in range(cfg.learner.epochs):
        chunks = micro_batches(n, cfg.learner.micro_batch_size)
        accumulator.epoch(len(chunks))
        for rows in chunks:
            # clean and corrupted rows go through one forward: DDP expects one forward per backward
            clouds_rows, target_rows = (rows + [n + r for r in rows], rows + rows) if batch.corrupted else (rows, rows)
            if batch.corrupted:
                logp = scorer(inputs.select(clouds_rows), ids[target_rows], mask[target_rows])
                clean, masked = logp[: len(rows)], logp[len(rows) :]
                loss, info = spa_loss(clean, masked, mask[rows], cfg.spa.beta, cfg.spa.nll_weight)
            elif align:
                logp, outputs = scorer(inputs.select(rows), ids[rows], mask[rows], align=True)
                nll, info = nll_loss(logp, mask[rows])
                box, category, colour = (t[rows] for t in align_targets)
                aligned, align_info = cloud_alignment_loss(outputs, box, category, colour, len(ALIGN_CATEGORIES))
                loss, info = nll + cfg.sft.align_weight * aligned, {**info, **align_info}
            else:
                loss, info = nll_loss(scorer(inputs.select(rows), ids[rows], mask[rows]), mask[rows])
            accumulator.backward(loss)
            losses.append({**info, "total": float(loss.detach())})
    return loss_means(losses)


def preference_update(scorer, policy, reference, batch: LearnBatch, cfg, accumulator: Accumulator) -> dict:
    """DPO against the frozen reference, all of this rank's pairs in one forward (so every rank runs one backward)."""
    inputs = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images).repeat_interleave(
        batch.group_size
    )
    all_ids, all_mask = (
        (batch.response_ids, batch.response_mask)
        if batch.response_ids is not None
        else policy.tokenize_responses(batch.response_texts)
    )
    chosen, rejected = [a for a, _ in batch.pairs], [b for _, b in batch.pairs]
    rows = chosen + rejected or [0]
    ids, mask = on_device(policy.device, all_ids[rows], all_mask[rows])
    ref = sequence_logprobs(
        reference, inputs.select(rows), ids, mask, cfg.learner.micro_batch_size, chunk=cfg.learner.logprob_chunk
    )
    losses = []
    for _ in range(cfg.learner.epochs):
        accumulator.epoch(1)
        logp = scorer(inputs.select(rows), ids, mask)
        if not batch.pairs:  # other ranks have pairs (learn_step skips a step where none has): join their backward
            accumulator.backward(logp.sum() * 0.0)
            continue
        seq, ref_seq, k = masked_sample_sum(logp, mask), masked_sample_sum(ref, mask), len(chosen)
        loss, info = dpo_loss(seq[:k], seq[k:], ref_seq[:k], ref_seq[k:], cfg.dpo.beta)
        accumulator.backward(loss)
        losses.append({**info, "total": float(loss.detach())})
    return loss_means(losses)


UPDATES = {
    "grca": policy_gradient_update,
    "grpo": policy_gradient_update,
    "sft": target_update,
    "spa": target_update,
    "dpo": preference_update,
}


def learning_rows(batch: LearnBatch, algo: str) -> int:
    """What in this rank's shard can teach anything: DPO's pairs, the rows whose reward came back, or every target."""
    if algo == "dpo":
        return len(batch.pairs)
    return int(batch.valid.sum()) if batch.valid is not None else len(batch.samples)


def learn_step(
    scorer, policy: PointVLM, reference, batch: LearnBatch, cfg, accumulator: Accumulator, scheduler, world: int = 1
) -> dict[str, float]:
    """One RL step of one rank: the algorithm's epochs over this rank's shard through `accumulator`, then the LR
    schedule's next step. Returns the loss statistics and `learner/*` (grad_norm, the lr this step used, skipped).

    A step where no rank has anything to learn from (the reward service was down, so every sample is missing) never
    reaches the optimizer: AdamW would still move the weights on its stale momentum and weight decay."""
    lr = scheduler.get_last_lr()[0]
    accumulator.grad_norms.clear()
    skipped = _sum_over_ranks(learning_rows(batch, cfg.algo.name), world, policy.device) == 0
    stats = {}
    if not skipped:
        policy.train()
        stats = UPDATES[cfg.algo.name](scorer, policy, reference, batch, cfg, accumulator)
        policy.eval()
    scheduler.step()
    return {
        **stats,
        "learner/grad_norm": max(accumulator.grad_norms, default=0.0),
        "learner/lr": lr,
        "learner/skipped": float(skipped),
    }


def _sum_over_ranks(count: int, world: int, device: torch.device) -> int:
    if world == 1:
        return count
    total = torch.tensor([count], dtype=torch.int64, device=device)  # NCCL reduces only GPU tensors
    dist.all_reduce(total)
    return int(total)


def load_reference(cfg, policy_dir) -> PointVLM | None:
    """The frozen initial policy that DPO and a KL term compare against, in the policy's LLM dtype (so that reference
    and policy log-probs come from the same arithmetic); None when the algorithm needs none."""
    if cfg.algo.name not in NEEDS_REFERENCE and cfg.algo.kl_beta == 0:
        return None
    return PointVLM.from_pretrained(policy_dir, llm_dtype=policy_overrides(cfg)["llm_dtype"]).eval()


def _mean_over_ranks(stats: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world == 1:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / world).tolist()))


def _save_checkpoint(policy: PointVLM, optimizer, scheduler, state: dict, directory: Path) -> None:
    policy.save_pretrained(directory / "policy")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps(state))


def _restore(cfg, loop_config: dict, world: int):
    """The policy (sharded under FSDP2), its scorer, optimizer, LR schedule and progress: from the newest checkpoint
    when there is one, else from the stage's initial policy."""
    device, sharded = ray.train.torch.get_device(), cfg.learner.strategy == "fsdp2"
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else tempfile.TemporaryDirectory() as resume_dir:
        resume_dir, resumed = Path(resume_dir), checkpoint is not None
        state = json.loads((resume_dir / "state.json").read_text()) if resumed else {"step": 0}
        if resumed and not (resume_dir / ("shards" if sharded else "policy")).is_dir():
            raise RuntimeError(
                f"{checkpoint.path}: not a checkpoint of learner.strategy={cfg.learner.strategy}; "
                "resume with the strategy that wrote it"
            )
        # a DDP checkpoint holds the whole policy; an FSDP2 one its shards, read over the stage's initial policy
        policy_dir = resume_dir / "policy" if resumed and not sharded else loop_config["policy_dir"]
        policy = PointVLM.from_pretrained(policy_dir, **policy_overrides(cfg))
        if cfg.learner.activation_checkpointing:
            enable_activation_checkpointing(policy)
        if sharded:
            shard_policy(policy, device, world, mixed_precision=device.type == "cuda")
            scorer = ResponseScorer(policy, cfg.learner.logprob_chunk)
        else:
            scorer = ray.train.torch.prepare_model(
                ResponseScorer(policy, cfg.learner.logprob_chunk),
                parallel_strategy_kwargs={"find_unused_parameters": True},
            )
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer, scheduler = make_optimizer(trainable, cfg)
        if resumed:
            saved = torch.load(resume_dir / ("schedule.pt" if sharded else "optimizer.pt"), weights_only=True)
            if sharded:
                load_sharded(policy, optimizer, resume_dir / "shards")
            else:
                optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
    return policy, scorer, optimizer, scheduler, trainable, state


def _publish(policy: PointVLM, rank: int, world: int, sharded: bool, sync: WeightSync, send) -> None:
    """Rank 0 puts the whole trainable tensors (on the CPU) into the object store and hands the controller their
    refs through `send(published)`; under FSDP2 every rank takes part in gathering them. Every rank returns once the
    workers hold them, so that none asks for the next batch before its rollouts can use the new version."""
    weights = published_state(policy) if sharded or rank == 0 else None
    if rank == 0:
        ray.get(send(sync.put(weights)))
    if world > 1:
        dist.barrier()


def _checkpoint(policy: PointVLM, optimizer, scheduler, progress: dict, stats: dict, rank: int, sharded: bool) -> None:
    """DDP: rank 0 writes the whole policy, optimizer and progress. FSDP2: every rank writes its shards of policy and
    optimizer (DCP), rank 0 the schedule and progress; Ray Train puts every rank's files in one checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if sharded:
            save_sharded(policy, optimizer, tmp / "shards")
            if rank == 0:
                torch.save({"scheduler": scheduler.state_dict()}, tmp / "schedule.pt")
                (tmp / "state.json").write_text(json.dumps(progress))
        elif rank == 0:
            _save_checkpoint(policy, optimizer, scheduler, progress, tmp)
        written = sharded or rank == 0
        ray.train.report(
            {"step": progress["step"], **stats},
            checkpoint=ray.train.Checkpoint.from_directory(tmp) if written else None,
        )


def _export(policy: PointVLM, cfg, loop_config: dict, rank: int, sharded: bool) -> None:
    """The final policy directory, written by rank 0; under FSDP2 the state is first gathered whole (every rank)
    and loaded into an unsharded copy of the stage's initial policy."""
    if sharded:
        state = full_state(policy)
        if rank == 0:
            export = PointVLM.from_pretrained(loop_config["policy_dir"], **policy_overrides(cfg))
            export.load_state_dict(state)
            export.save_pretrained(loop_config["final_dir"])
    elif rank == 0:
        policy.save_pretrained(loop_config["final_dir"])


def learner_loop(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker. loop_config: config (dict), controller (actor name), policy_dir, final_dir."""
    cfg = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    controller = ray.get_actor(loop_config["controller"])
    torch.manual_seed(cfg.run.seed + rank)
    sharded = cfg.learner.strategy == "fsdp2"
    policy, scorer, optimizer, scheduler, trainable, state = _restore(cfg, loop_config, world)
    reference = load_reference(cfg, loop_config["policy_dir"])
    if reference is not None:
        reference.to(policy.device)
    accumulator = Accumulator(optimizer, trainable, cfg.learner.grad_accum, cfg.learner.grad_clip)
    start, skipped_steps = state["step"], state.get("skipped_steps", 0)
    publish = partial(_publish, policy, rank, world, sharded, WeightSync(cfg.sync.transport, cfg.sync.bucket_mb))
    publish(partial(controller.publish.remote, start))
    for step in range(start, cfg.run.steps):
        batch: LearnBatch = ray.get(controller.next_batch.remote(step, rank, world))
        began = time.perf_counter()
        lag = step - batch.version
        if lag > cfg.rollout.max_staleness:
            raise RuntimeError(
                f"step {step}: rollout from policy version {batch.version} is {lag} versions stale "
                f"(rollout.max_staleness={cfg.rollout.max_staleness})"
            )
        stats = learn_step(scorer, policy, reference, batch, cfg, accumulator, scheduler, world)
        skipped_steps += int(stats["learner/skipped"])
        stats.update(
            {
                "learner/skipped_steps": float(skipped_steps),
                "learner/version_lag": float(lag),
                "time/learn": time.perf_counter() - began,
            }
        )
        stats = _mean_over_ranks(stats, world, policy.device)
        publish(partial(controller.finish_step.remote, step, stats))
        if (step + 1) % cfg.checkpoint.every == 0 or step + 1 == cfg.run.steps:
            _checkpoint(
                policy, optimizer, scheduler, {"step": step + 1, "skipped_steps": skipped_steps}, stats, rank, sharded
            )
        if world > 1:
            dist.barrier()
    _export(policy, cfg, loop_config, rank, sharded)
