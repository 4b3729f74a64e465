"""The learner: the loop each Ray Train worker runs (DDP or FSDP2, over gloo on CPU and NCCL on GPUs).

Each step it takes its shard of the controller's batch and runs the algorithm's update on it
(`rl.algorithms.update.learn_step`: `learner.epochs` passes of micro-batches with AdamW, gradient accumulation and
clipping, then the LR schedule's step), and rank 0 hands the new trainable weights to the controller, which pushes
them to the rollout workers as the next version. Every `checkpoint.every` steps a checkpoint goes through
`ray.train.report`: DDP's rank 0 writes policy + optimizer + step; with FSDP2 (`rl/runtime/sharding.py`) every rank
writes its shards (DCP) and the final policy is gathered whole for the export. A restarted run resumes from the
latest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from policies import PointVLM
from policies.roles import process_device, stored_llm_dtype
from rl.algorithms import algorithm
from rl.algorithms.batch import LearnBatch
from rl.algorithms.update import Learner, ResponseScorer, learn_step, make_learner
from rl.config import Config, policy_overrides
from rl.config_loading import config_from_dict
from rl.runtime.placement import takes_turns_on_gpus
from rl.runtime.sharding import (
    enable_activation_checkpointing,
    full_state,
    load_sharded,
    move_learner,
    published_state,
    save_sharded,
    shard_policy,
)
from rl.runtime.traces import learner_logprobs_of
from rollout.weight_sync import WeightSync


def learner_overrides(cfg: Config) -> dict:
    """`policy_overrides` with the dtype the learner stores the LLM in (`policies.roles.stored_llm_dtype`: float32
    masters under FSDP2), so that the weights AdamW updates can take its small steps."""
    sharded = cfg.learner.strategy == "fsdp2"
    return {**policy_overrides(cfg), "llm_dtype": stored_llm_dtype(cfg.policy.dtype, sharded)}


def load_reference(cfg: Config, policy_dir: str | Path, device: torch.device, world: int) -> PointVLM | None:
    """The frozen initial policy that DPO and a KL term compare against, stored, sharded and computing as the
    learner's policy (its LLM dtype, fusion and FSDP2 precision), so that at step 0 the two score every token alike;
    None when the algorithm needs none. Under FSDP2 every rank must call it (it shards)."""
    if not algorithm(cfg.algo.name).needs_reference(cfg):
        return None
    overrides = learner_overrides(cfg)
    same = {key: overrides[key] for key in ("llm_dtype", "fusion") if key in overrides}
    reference = PointVLM.from_pretrained(policy_dir, **same).eval().requires_grad_(False)
    if cfg.learner.strategy == "fsdp2":
        shard_policy(reference, device, world, cfg.policy.dtype)
    return reference.to(device)


def rank_terms(stats: dict[str, float], keys: list[str], rows: int) -> torch.Tensor:
    """(2, K) float64: this rank's weight x value and weight of each of `keys`, to be summed over ranks. A `loss/*`
    statistic weighs the rows (DPO: pairs) it was averaged over, any other one 1; a key the rank lacks weighs 0."""
    weights = [(rows if key.startswith("loss/") else 1) if key in stats else 0 for key in keys]
    values = [stats.get(key, 0.0) for key in keys]
    return torch.tensor([[w * v for w, v in zip(weights, values)], weights], dtype=torch.float64)


def weighted_means(keys: list[str], summed: torch.Tensor) -> dict[str, float]:
    """Each key's mean over ranks from the summed `rank_terms`; a key no rank gave weight is left out (a 0 there
    would read as a measured loss)."""
    return {key: total / weight for key, (total, weight) in zip(keys, summed.T.tolist()) if weight > 0}


def _mean_over_ranks(stats: dict[str, float], rows: int, world: int, device: torch.device) -> dict[str, float]:
    """The step's statistics over ranks, each `loss/*` weighted by the rows (pairs) of the rank that measured it.
    Ranks need not report the same keys (a DPO rank without pairs has no loss), so the key names are gathered first:
    an all-reduce of tensors of different lengths aborts gloo."""
    if world == 1:
        return stats
    names: list[list[str]] = [[] for _ in range(world)]
    dist.all_gather_object(names, sorted(stats))
    keys = sorted(set().union(*names))
    summed = rank_terms(stats, keys, rows).to(device)  # NCCL reduces only GPU tensors
    dist.all_reduce(summed)
    return weighted_means(keys, summed.cpu())


def _restore(cfg: Config, loop_config: dict, world: int) -> tuple[Learner, dict]:
    """This rank's learner (the policy, sharded under FSDP2, its scorer, optimizer, LR schedule and reference) and
    the run's progress: from the newest checkpoint when there is one, else from the stage's initial policy."""
    device, sharded = process_device("learner"), cfg.learner.strategy == "fsdp2"
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
        policy = PointVLM.from_pretrained(policy_dir, **learner_overrides(cfg))
        if cfg.learner.activation_checkpointing:
            enable_activation_checkpointing(policy)
        if sharded:
            shard_policy(policy, device, world, cfg.policy.dtype)
            scorer = ResponseScorer(policy, cfg.learner.logprob_chunk)
        else:
            scorer = ray.train.torch.prepare_model(
                ResponseScorer(policy, cfg.learner.logprob_chunk),
                parallel_strategy_kwargs={"find_unused_parameters": True},
            )
        reference = load_reference(cfg, loop_config["policy_dir"], policy.device, world)
        learner = make_learner(policy, cfg, reference, world, scorer)
        if resumed:
            saved = read_saved(resume_dir / ("schedule.pt" if sharded else "optimizer.pt"), device)
            if sharded:
                load_sharded(policy, learner.accumulator.optimizer, resume_dir / "shards")
            else:
                learner.accumulator.optimizer.load_state_dict(saved["optimizer"])
            learner.scheduler.load_state_dict(saved["scheduler"])
    return learner, state


def read_saved(path: Path, device: torch.device) -> dict:
    """A `torch.save`d optimizer or schedule state, onto this rank's `device`: the file records the saving rank's
    devices, and Ray Train shows every rank all the GPUs of its node, so without `map_location` every rank would
    load it onto cuda:0."""
    return torch.load(path, map_location=device, weights_only=True)


def _publish(policy: PointVLM, rank: int, world: int, sync: WeightSync, release, send: Callable) -> None:
    """Rank 0 streams the whole trainable tensors (on the CPU) into the object store, a bucket at a time, and hands
    the controller their refs through `send(published)`; under FSDP2 every other rank runs the same gathers (its
    generator yields nothing). `release` (colocated vLLM: `rl.runtime.sharding.move_learner` to the CPU), when given, runs
    on every rank before anything is sent, since sending wakes the engines that share these GPUs. Every rank returns
    once the workers hold the weights, so that none asks for the next batch before its rollouts can use the new
    version."""
    tensors = published_state(policy, rank)
    published = sync.put(tensors) if rank == 0 else deque(tensors, maxlen=0)  # other ranks: the gathers, kept nowhere
    if release is not None:
        release()
        if world > 1:
            dist.barrier()
    if rank == 0:
        ray.get(send(published))
    if world > 1:
        dist.barrier()


def _checkpoint(learner: Learner, progress: dict, stats: dict, rank: int, sharded: bool) -> None:
    """DDP: rank 0 writes the whole policy, optimizer and progress. FSDP2: every rank writes its shards of policy and
    optimizer (DCP), rank 0 the schedule and progress; Ray Train puts every rank's files in one checkpoint."""
    optimizer, schedule = learner.accumulator.optimizer, {"scheduler": learner.scheduler.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if sharded:
            save_sharded(learner.policy, optimizer, tmp / "shards")
            if rank == 0:
                torch.save(schedule, tmp / "schedule.pt")
        elif rank == 0:
            learner.policy.save_pretrained(tmp / "policy")
            torch.save({"optimizer": optimizer.state_dict(), **schedule}, tmp / "optimizer.pt")
        if rank == 0:
            (tmp / "state.json").write_text(json.dumps(progress))
        written = sharded or rank == 0
        ray.train.report(
            {"step": progress["step"], **stats},
            checkpoint=ray.train.Checkpoint.from_directory(tmp) if written else None,
        )


def _export(policy: PointVLM, cfg: Config, loop_config: dict, rank: int, sharded: bool) -> None:
    """The final policy directory, written by rank 0; under FSDP2 the state is first gathered whole (every rank)
    and loaded into an unsharded copy of the stage's initial policy."""
    if sharded:
        state = full_state(policy)
        if rank == 0:
            export = PointVLM.from_pretrained(loop_config["policy_dir"], **policy_overrides(cfg))
            export.load_state_dict(state)
            write_atomically(Path(loop_config["final_dir"]), export.save_pretrained)
    elif rank == 0:
        write_atomically(Path(loop_config["final_dir"]), policy.save_pretrained)


def write_atomically(target: Path, write) -> None:
    """`write(directory)` into a sibling `<target>.partial`, then renamed to `target` (a previous one is moved aside
    first and removed after): a kill while writing leaves the previous directory or none, never half a policy."""
    partial, previous = target.with_name(target.name + ".partial"), target.with_name(target.name + ".previous")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
    partial.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def learner_loop(loop_config: dict) -> None:
    """Ray Train's train_loop_per_worker. loop_config: config (dict), controller (actor name), policy_dir, final_dir."""
    cfg = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    controller = ray.get_actor(loop_config["controller"])
    torch.manual_seed(cfg.run.seed + rank)
    sharded = cfg.learner.strategy == "fsdp2"
    began = time.perf_counter()
    learner, state = _restore(cfg, loop_config, world)
    # reported with the next step: building the learner (from a checkpoint when restored), the last checkpoint's save
    timings = {"time/learner_start": time.perf_counter() - began}
    policy, optimizer, reference = learner.policy, learner.accumulator.optimizer, learner.reference
    algo = algorithm(cfg.algo.name)
    start, skipped_steps = state["step"], state.get("skipped_steps", 0)
    # colocated vLLM: the learner holds its GPU only between a batch (the engines asleep) and its publication
    turns = takes_turns_on_gpus(cfg)
    device = policy.device
    release = partial(move_learner, policy, optimizer, reference, torch.device("cpu")) if turns else None
    sync = WeightSync(cfg.sync.transport, cfg.sync.bucket_mb)
    publish = partial(_publish, policy, rank, world, sync, release)
    publish(partial(controller.publish.remote, start, rollback=True))
    for step in range(start, cfg.run.steps):
        batch: LearnBatch = ray.get(controller.next_batch.remote(step, rank, world))
        began = time.perf_counter()
        if turns:
            move_learner(policy, optimizer, reference, device)
        lag = step - batch.version
        if lag > cfg.rollout.max_staleness:
            raise RuntimeError(
                f"step {step}: rollout from policy version {batch.version} is {lag} versions stale "
                f"(rollout.max_staleness={cfg.rollout.max_staleness})"
            )
        stats = learn_step(learner, algo, batch, cfg)
        skipped_steps += int(stats["learner/skipped"])
        stats.update(
            {
                "learner/skipped_steps": float(skipped_steps),
                "learner/version_lag": float(lag),
                "time/learn": time.perf_counter() - began,
                **timings,
            }
        )
        timings = {}
        stats = _mean_over_ranks(stats, algo.learning_rows(batch), world, policy.device)
        # rank 0's shard holds the traced rows: their learner log-probs travel with the statistics
        traced = learner_logprobs_of(batch, cfg.trace.samples_per_step) if rank == 0 else None
        publish(partial(controller.finish_step.remote, step, stats, learner_logprobs=traced))
        if (step + 1) % cfg.checkpoint.every == 0 or step + 1 == cfg.run.steps:
            began = time.perf_counter()
            _checkpoint(learner, {"step": step + 1, "skipped_steps": skipped_steps}, stats, rank, sharded)
            timings = {"time/checkpoint": time.perf_counter() - began}
        if world > 1:
            dist.barrier()
    _export(policy, cfg, loop_config, rank, sharded)
