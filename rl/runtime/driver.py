"""The driver: `run_stage` starts one stage, its controller (rl/runtime/controller.py: prompts -> rollouts -> rewards ->
advantages -> weight sync -> metrics) and its learner under Ray Train, and `main` chains the stages of a run (SFT
warm-up, the algorithm, evaluation). Every entry script `rl/train_*.py` is `main` with its default YAML.

Placement (`rl/runtime/placement.py`) is planned from the cluster before a stage starts: the rollout workers' placement
group is reserved first, then Ray Train's learner workers take theirs (colocated: the rest of each rollout GPU).

Run directory (`run.dir`): config.yaml, metrics.jsonl, tensorboard/, learner/ (Ray Train checkpoints), policy/ (the
final policy, a `pointrl eval --policy` directory), eval_final.json, and for a warm-started run sft/ and eval_sft.json.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from data3d import read_meta
from data3d.settings import DataSettings, dataset_settings, save_settings
from rl.algorithms import ALGORITHMS, algorithm
from rl.config import Config, ConfigError, data_settings, run_quant
from rl.config_loading import config_to_dict, parse_cli, save_config
from rl.runtime.controller import Controller, check_engine_sleep
from rl.runtime.data import held_out_name, held_out_samples
from rl.runtime.placement import (
    PlacementError,
    check_config,
    learner_scaling,
    plan_on_cluster,
    reserve_rollout_group,
    uses_rollouts,
)

NAMESPACE = "pointrl"


def check_run(cfg: Config) -> None:
    """What a run's config cannot do whatever the cluster: one ConfigError line, before Ray or any stage starts
    (main checks the whole run, so a bad algorithm stage is refused before its SFT warm-up runs)."""
    check_config(cfg)
    if cfg.policy.init and not (Path(cfg.policy.init) / "pointvlm.json").is_file():
        raise ConfigError(
            f"policy.init: {cfg.policy.init} is not a policy directory (no pointvlm.json there); give a "
            "directory that PointVLM.save_pretrained or a run's policy/ wrote, or null to start from SFT"
        )
    stages = [("rollout.prompts_per_step", cfg)]
    if not cfg.policy.init and algorithm(cfg.algo.name).warm_up:  # run_stages runs the SFT warm-up first
        stages.append(("sft.batch_size", warmup_config(cfg)))
    for name, stage in stages:
        if stage.rollout.prompts_per_step % cfg.learner.num_workers:
            raise ConfigError(
                f"{name}={stage.rollout.prompts_per_step} must divide evenly over learner.num_workers="
                f"{cfg.learner.num_workers} (every rank runs the same number of micro-batches)"
            )
    if cfg.rollout.mode == "one_step_off":
        check_one_step_off(cfg)
    if cfg.placement.mode == "colocated" and cfg.rollout.backend == "vllm" and uses_rollouts(cfg):
        from rollout.vllm_engine import VLLMEngine  # imports vllm only when an engine is built

        check_engine_sleep(VLLMEngine)


def check_one_step_off(cfg: Config) -> None:
    """rollout.mode=one_step_off overlaps step k+1's rollouts with step k's update: it needs an algorithm whose loss
    weighs the lag (GRCA, GRPO), a staleness bound that admits it, and GPUs that are not taken in turns."""
    if not algorithm(cfg.algo.name).clips_ratio:
        raise ConfigError(
            f"rollout.mode: one_step_off is for {' and '.join(n for n in ALGORITHMS if algorithm(n).clips_ratio)} "
            f"(their ratio corrects for the older rollout policy), not {cfg.algo.name}; use rollout.mode=sync"
        )
    if cfg.rollout.max_staleness < 1:
        raise ConfigError(
            "rollout.max_staleness: one_step_off trains on rollouts one version old; set rollout.max_staleness=1 "
            "or more"
        )
    if cfg.placement.mode == "colocated":
        raise ConfigError(
            "rollout.mode: one_step_off overlaps rollouts with training, while placement.mode=colocated has them "
            "take turns on each GPU; use placement.mode=disaggregated"
        )


def init_ray(cfg: Config) -> None:
    """Join the cluster of `run.ray_address` or $RAY_ADDRESS (`ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE)
        return
    needed = (
        cfg.learner.num_workers * cfg.learner.cpus_per_worker
        + cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
        + cfg.reward.replicas * cfg.reward.cpus_per_replica
        + 0.5
    )
    # stages take turns (rollout, then reward, then learn), so logical CPUs may exceed the cores
    num_cpus = cfg.run.num_cpus or max(os.cpu_count() or 1, int(np.ceil(needed)))
    # the dashboard serves the State API, which Ray Train's placement-group cleaner polls (without it, it logs a
    # warning every second), and shows the run's metrics at http://127.0.0.1:8265
    ray.init(num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=True, log_to_driver=True)


def run_stage(cfg: Config, policy_dir: Path, run_dir: Path) -> Path:
    """Train one algorithm from `policy_dir` for `run.steps` steps; returns the final policy directory."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.util.placement_group import remove_placement_group

    from rl.runtime.learner import learner_loop

    check_run(cfg)
    plan = plan_on_cluster(cfg, uses_rollouts(cfg))  # a cluster that cannot hold the stage is refused in one line
    # actors run in their own working directories: hand them absolute paths
    policy_dir, run_dir = Path(policy_dir).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "learner").exists() and not cfg.checkpoint.resume:
        raise FileExistsError(
            f"{run_dir}: a run is already there; set checkpoint.resume=true to continue it or choose another run.dir"
        )
    save_config(cfg, run_dir / "config.yaml")
    name = f"controller-{run_dir.as_posix().replace('/', '-')}"
    # reserved before Ray Train asks for the learners' resources: colocated, they take the rest of these GPUs
    rollout_group = reserve_rollout_group(plan)
    # on the driver's node where it has room (as Ray Train puts its own controller there): the run's state then goes
    # down only with the driver, not with a node of workers
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    controller = Controller.options(name=name, scheduling_strategy=here).remote(
        config_to_dict(cfg), str(policy_dir), str(run_dir), rollout_group
    )
    final_dir = run_dir / "policy"
    try:
        if plan.colocated:  # vLLM sizes its memory at start from a GPU it expects to have to itself
            ray.get(controller.ready.remote())
        trainer = TorchTrainer(
            learner_loop,
            train_loop_config={
                "config": config_to_dict(cfg),
                "controller": name,
                "policy_dir": str(policy_dir),
                "final_dir": str(final_dir),
            },
            scaling_config=learner_scaling(cfg, plan, rollout_group),
            run_config=RunConfig(
                name="learner",
                storage_path=str(run_dir),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                # a dead learner worker: the group restarts from the newest checkpoint (rl.runtime.learner._restore)
                failure_config=FailureConfig(max_failures=cfg.learner.max_failures),
            ),
        )
        trainer.fit()
    finally:
        ray.kill(controller)
        if rollout_group is not None:
            remove_placement_group(rollout_group)
    save_settings(final_dir, run_data_settings(cfg))
    return final_dir


def run_data_settings(cfg: Config) -> DataSettings:
    """What the run's samples look like: its dataset's settings, or the generator's from section data; a dataset
    written with other bins than the run's is refused (one quantization per run)."""
    settings = data_settings(cfg)
    if cfg.data.dir:
        written = dataset_settings(read_meta(cfg.data.dir))
        if written.bins != settings.bins:
            raise ValueError(
                f"data.dir {cfg.data.dir} was written with {written.bins} bins but reward.bins is "
                f"{settings.bins}; set reward.bins={written.bins}"
            )
        settings = written
    return settings


def warmup_config(cfg: Config) -> Config:
    """The SFT warm-up (GRCA's Stage 1) that precedes an algorithm when no initial policy is given."""
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, name=f"{cfg.run.name}-sft", steps=cfg.sft.steps),
        algo=dataclasses.replace(cfg.algo, name="sft"),
        rollout=dataclasses.replace(cfg.rollout, prompts_per_step=cfg.sft.batch_size, mode="sync"),
        learner=dataclasses.replace(
            cfg.learner, lr=cfg.sft.lr, epochs=1, warmup_steps=cfg.sft.warmup_steps, schedule=cfg.sft.schedule
        ),
    )


def held_out_answerer(cfg: Config, policy_dir: Path):
    """The policy of `policy_dir` as an answerer with the run's evaluation settings (section eval), in this process,
    on the evaluation role's device (`policies.roles.process_device`)."""
    from policies import PointVLM
    from policies.roles import process_device
    from rl.eval.evaluate import policy_answerer

    return policy_answerer(
        PointVLM.from_pretrained(policy_dir).eval().to(process_device("evaluation")),
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        greedy=cfg.eval.greedy,
        use_images=cfg.data.use_images,
        quant=run_quant(cfg),
    )


def evaluation_resources(cfg: Config) -> dict[str, float]:
    """What the held-out evaluation takes between stages, when neither learner nor rollout workers hold anything:
    the larger of their CPU reservations (Ray gives a task OMP_NUM_THREADS = its CPUs) and one GPU where either
    role has GPUs, so that a 3B evaluation never decodes on the driver's CPUs."""
    uses_gpus = cfg.rollout.gpus_per_worker > 0 or cfg.learner.use_gpu
    return {
        "num_cpus": max(cfg.rollout.cpus_per_worker, cfg.learner.cpus_per_worker),
        "num_gpus": 1.0 if uses_gpus else 0.0,
    }


def _evaluate_report(config: dict, policy_dir: str) -> dict:
    """The body of the evaluation task: the report of `evaluate_policy`, computed where Ray placed the task."""
    from rl.config_loading import config_from_dict
    from rl.eval.evaluate import evaluate

    cfg = config_from_dict(config)
    samples = held_out_samples(cfg)
    answerer = held_out_answerer(cfg, Path(policy_dir))
    report = evaluate(answerer, samples, run_quant(cfg), reliance=cfg.eval.reliance, blank_images=cfg.data.use_images)
    report["meta"] = {"policy": policy_dir, "samples": len(samples), "held_out": held_out_name(cfg)}
    return report


def evaluate_policy(cfg: Config, policy_dir: Path, out: Path) -> dict:
    """The held-out evaluation of `policy_dir` (a path every node reads: shared storage on a cluster), run by a Ray
    task with `evaluation_resources`; the driver only writes the report it returns to `out`."""
    from rl.eval.evaluate import write_report

    task = ray.remote(_evaluate_report).options(**evaluation_resources(cfg), max_retries=0)
    report = ray.get(task.remote(config_to_dict(cfg), str(Path(policy_dir).resolve())))
    write_report(report, out)
    return report


def initial_policy(cfg: Config, run_dir: Path) -> Path:
    """Where a run without policy.init starts: a small local Point-VLM of section policy's size, built once in
    `run_dir/init_policy` (a rerun finds it there)."""
    from policies.tiny import build_tiny_policy

    policy_dir = run_dir / "init_policy"
    if not (policy_dir / "pointvlm.json").exists():
        build_tiny_policy(
            out_dir=policy_dir, seed=cfg.run.seed, hidden_size=cfg.policy.hidden_size, num_layers=cfg.policy.num_layers
        )
    return policy_dir


def run_stages(cfg: Config, run_dir: Path) -> dict:
    """The SFT warm-up (when policy.init is unset and the algorithm is not SFT), then the algorithm, each evaluated;
    returns the reports by stage."""
    reports = {}
    policy_dir = Path(cfg.policy.init) if cfg.policy.init else None
    if policy_dir is None:
        policy_dir = initial_policy(cfg, run_dir)
        if algorithm(cfg.algo.name).warm_up:
            policy_dir = run_stage(warmup_config(cfg), policy_dir, run_dir / "sft")
            reports["sft"] = evaluate_policy(cfg, policy_dir, run_dir / "eval_sft.json")
    final_dir = run_stage(cfg, policy_dir, run_dir)
    reports["final"] = evaluate_policy(cfg, final_dir, run_dir / "eval_final.json")
    return reports


def main(default_config: str, argv: list[str] | None = None) -> dict:
    """Parse `[--config PATH] [key=value ...]`, run the stages, evaluate, print SFT vs final side by side."""
    import sys

    from rl.eval.evaluate import format_ceiling, format_comparison, format_table

    cfg = parse_cli(sys.argv[1:] if argv is None else argv, default_config)
    try:
        check_run(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    run_dir = Path(cfg.run.dir)
    init_ray(cfg)
    try:
        plan_on_cluster(cfg, uses_rollouts(cfg))  # before anything is built; run_stage checks each stage again
        reports = run_stages(cfg, run_dir)
    except PlacementError as exc:
        print(f"placement error: {exc}", file=sys.stderr)
        sys.exit(2)
    for stage, report in reports.items():
        meta = report["meta"]
        print(
            f"\nheld-out evaluation, {stage} policy ({meta['samples']} objects, {meta['held_out']}):\n"
            f"{format_table(report)}\n{format_ceiling(report)}"
        )
    if "sft" in reports:
        print(f"\nSFT start vs {cfg.algo.name} (gap = clean minus cloud swapped):\n{format_comparison(reports)}")
    print(f"\nrun directory: {run_dir}  (final policy: {run_dir / 'policy'})")
    return reports
