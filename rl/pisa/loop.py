"""PiSA's self-augmenting data engine (`pointrl engine`; its command line is `rl.cli.engine`). Each loop, the policy
annotates unlabeled clouds on the rollout workers, G samples each (Stage 1); `rl.pisa.crosscheck` keeps, repairs or
drops every field against the cloud and its rendered views (Stage 2); the policy is retrained by SFT on the kept
annotations beside as many of its original training objects (Stage 3), evaluated on the run's held-out objects, and
annotates the next loop.

    pointrl engine --policy DIR --clouds DATASET --out DIR [--split train] [--config YAML] [engine.loops=3 ...]

The clouds are a dataset's split read as unlabeled: the engine shows the policy their points, image and question,
and uses their targets only to report how good the kept annotations are. Out directory: baseline/eval.json; per arm
(`pisa`, and `no_stage2`, the ablation that keeps the medoid annotation unchecked) loop<k>/ with annotations.jsonl
(each cloud's G outputs), decisions.jsonl (one line per cloud and field: verdict and reason), data/ (the retraining
set, store format), train/ (the SFT stage; train/policy is the loop's policy) and eval.json; engine_report.md and
engine_report.json compare them. A loop whose summary.json exists is finished: a rerun with the same arguments and
config (recorded in engine.json) continues after it; one with others is refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from data3d import BenchmarkDataset, Sample, read_meta, write_dataset
from data3d.serialize import target_text
from data3d.settings import check_compatible, dataset_settings, load_settings
from rl.algorithms import algorithm
from rl.config import Config, data_settings, run_quant
from rl.config_loading import config_to_dict
from rl.eval.evaluate import object_scores
from rl.pisa.crosscheck import count_decisions, cross_check, medoid_only
from rl.runtime.data import held_out_seed, training_prompts

ARMS = {"pisa": cross_check, "no_stage2": medoid_only}
REPORTED = ("parse_rate", "answer_acc", "iou3d", "kpa3d", "iou2d", "kpa2d", "rpc")


def unlabeled_clouds(cfg: Config, policy_dir: Path, root: Path, split: str) -> list[Sample]:
    """The first engine.num_clouds samples of the split, refused in one line if the policy was trained with other
    data settings or if they are the run's own training or held-out objects."""
    meta = read_meta(root)
    settings = load_settings(policy_dir) or data_settings(cfg)
    check_compatible(settings, dataset_settings(meta), policy_dir, root)
    seed = meta.get("config", {}).get("seed")
    if cfg.data.dir is None and seed in (cfg.data.seed, held_out_seed(cfg)):
        raise ValueError(
            f"{root} was generated with seed {seed}, the seed of the run's training (data.seed={cfg.data.seed}) or "
            f"held-out objects ({held_out_seed(cfg)}); write the clouds with another `pointrl synth --seed`"
        )
    dataset = BenchmarkDataset(root, split)
    return [dataset[i] for i in range(min(cfg.engine.num_clouds, len(dataset)))]


def annotate(cfg: Config, policy_dir: Path, clouds: list[Sample], seed: int) -> list[str]:
    """Stage 1: G = engine.samples outputs per cloud from the rollout workers, cloud-major."""
    import ray

    from rl.config import policy_overrides
    from rl.runtime.controller import rollout_threads
    from rollout.engine import SamplingConfig
    from rollout.worker import generate_on_workers, make_rollout_workers

    r = cfg.rollout
    workers = make_rollout_workers(
        r.num_workers,
        policy_dir,
        r.cpus_per_worker,
        r.backend,
        torch_threads=rollout_threads(r.cpus_per_worker),
        gpus_per_worker=r.gpus_per_worker,
        policy_overrides=policy_overrides(cfg),
    )
    sampling = SamplingConfig(
        n=cfg.engine.samples, temperature=r.temperature, max_new_tokens=r.max_new_tokens, seed=seed
    )
    try:
        return generate_on_workers(workers, clouds, sampling, run_quant(cfg), cfg.data.use_images).texts
    finally:
        for worker in workers:
            ray.kill(worker)


def training_set(cfg: Config, kept: list[Sample], loop: int, out: Path) -> Path:
    """The retraining data: the kept annotations and as many of the run's original training objects (a different
    slice each loop), written in the store format."""

    originals = training_prompts(cfg).take(loop, len(kept))
    settings = data_settings(cfg)
    config = {**settings.to_dict(), "source": "pointrl engine", "loop": loop, "annotated": len(kept)}
    write_dataset(out, {"train": kept + originals}, config=config, quant=settings.quant(), overwrite=True)
    return out


def retrain(cfg: Config, policy_dir: Path, data_dir: Path, run_dir: Path) -> Path:
    """Stage 3: SFT from the loop's policy on its training set, then engine.rl_steps of the run's algorithm (algo.name)
    on the same prompts if asked; returns the retrained policy directory."""
    from rl.runtime.driver import run_stage, warmup_config

    e = cfg.engine
    stage = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, dir=str(data_dir)),
        sft=dataclasses.replace(cfg.sft, steps=e.steps, lr=e.lr, warmup_steps=e.steps // 10),
        run=dataclasses.replace(cfg.run, dir=str(run_dir)),
        eval=dataclasses.replace(cfg.eval, every=0),
    )
    policy = run_stage(warmup_config(stage), policy_dir, run_dir)
    if e.rl_steps and algorithm(cfg.algo.name).warm_up:
        rl_dir = run_dir / "rl"
        policy = run_stage(
            dataclasses.replace(stage, run=dataclasses.replace(stage.run, dir=str(rl_dir), steps=e.rl_steps)),
            policy,
            rl_dir,
        )
    return policy


def evaluate(cfg: Config, policy_dir: Path, out: Path, reliance: bool) -> dict:
    """The run's held-out evaluation of a policy (the reliance gaps only where asked: they triple the time)."""
    from rl.runtime.driver import evaluate_policy

    return evaluate_policy(
        dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, reliance=reliance)), policy_dir, out
    )


def run_loop(cfg: Config, arm: str, loop: int, policy_dir: Path, clouds: list[Sample], loop_dir: Path) -> dict:
    """One annotate -> cross-check -> retrain -> evaluate loop; returns its summary (also in loop_dir/summary.json)."""
    g, quant = cfg.engine.samples, run_quant(cfg)
    shutil.rmtree(loop_dir, ignore_errors=True)  # an unfinished loop is redone whole
    loop_dir.mkdir(parents=True)
    texts = annotate(cfg, policy_dir, clouds, seed=1000 * cfg.run.seed + loop)
    with open(loop_dir / "annotations.jsonl", "w") as f:
        for i, cloud in enumerate(clouds):
            f.write(json.dumps({"uid": cloud.uid, "texts": texts[i * g : (i + 1) * g]}) + "\n")
    kept, decisions = [], []
    for i, cloud in enumerate(clouds):
        annotated, why = ARMS[arm](cloud, texts[i * g : (i + 1) * g], quant)
        decisions += why
        if annotated is not None:
            kept.append((cloud, annotated))
    with open(loop_dir / "decisions.jsonl", "w") as f:
        f.writelines(json.dumps(dataclasses.asdict(d)) + "\n" for d in decisions)
    # the clouds' own targets, never shown to the engine, say how good what it kept is
    quality = object_scores([c for c, _ in kept], [target_text(a, quant) for _, a in kept], quant) if kept else {}
    if kept:
        policy = retrain(
            cfg, policy_dir, training_set(cfg, [a for _, a in kept], loop, loop_dir / "data"), loop_dir / "train"
        )
    else:
        print(f"engine: {arm} loop {loop}: no annotation survived, so the policy is not retrained", flush=True)
        policy = policy_dir
    report = evaluate(cfg, policy, loop_dir / "eval.json", reliance=loop == cfg.engine.loops)
    summary = {
        "arm": arm,
        "loop": loop,
        "policy": str(policy),
        "clouds": len(clouds),
        "kept": len(kept),
        "kept_quality": {m: float(np.mean(quality[m])) for m in REPORTED if m in quality},
        "decisions": count_decisions(decisions),
        "held_out": _held_out(report),
    }
    (loop_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def check_rerun(out: Path, started: dict) -> None:
    """Record what the engine in `out` runs with (engine.json); a rerun must be the same run to continue it."""
    record = out / "engine.json"
    started = json.loads(json.dumps(started))  # as it reads back: tuples are lists
    if not record.is_file():
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(started, indent=1) + "\n")
        return
    before, now = _flat(json.loads(record.read_text())), _flat(started)
    changed = [f"{key} {before.get(key)!r} vs {value!r}" for key, value in now.items() if before.get(key) != value]
    if changed:
        raise ValueError(f"{out} holds an engine run with other settings ({'; '.join(changed[:3])}); use another --out")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"engine": {"steps": 60}} -> {"engine.steps": 60}: the keys a config override names."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _held_out(report: dict) -> dict:
    metrics = {m: report[m] for m in REPORTED}
    if "reliance" in report:
        metrics["swap_gap_iou3d"] = report["reliance"]["gap_swapped"]["iou3d"]
    return {**metrics, "n": report["n"], "held_out": report["meta"]["held_out"]}


def run_engine(cfg: Config, policy_dir: Path, clouds_dir: Path, split: str, out: Path) -> dict:
    """Baseline, then engine.loops loops per arm; writes and returns the report."""
    from rl.runtime.driver import init_ray

    clouds = unlabeled_clouds(cfg, policy_dir, clouds_dir, split)
    arguments = {"policy": str(policy_dir), "clouds": str(clouds_dir), "split": split}
    check_rerun(out, {"arguments": arguments, "config": config_to_dict(cfg)})
    init_ray(cfg)
    baseline_eval = out / "baseline" / "eval.json"
    if not baseline_eval.is_file():
        evaluate(cfg, policy_dir, baseline_eval, reliance=True)
    report = {"baseline": _held_out(json.loads(baseline_eval.read_text())), "clouds": str(clouds_dir), "arms": {}}
    for arm in ["pisa", "no_stage2"] if cfg.engine.ablation else ["pisa"]:
        policy, loops = policy_dir, []
        for loop in range(1, cfg.engine.loops + 1):
            loop_dir = out / arm / f"loop{loop}"
            done = loop_dir / "summary.json"
            summary = json.loads(done.read_text()) if done.is_file() else None
            if summary is None:
                print(f"engine: {arm}, loop {loop} of {cfg.engine.loops}", flush=True)
                summary = run_loop(cfg, arm, loop, policy, clouds, loop_dir)
            loops.append(summary)
            policy = Path(summary["policy"])
        report["arms"][arm] = loops
    (out / "engine_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "engine_report.md").write_text(format_report(report))
    return report


def format_report(report: dict) -> str:
    """PiSA's table: the baseline and each loop of each arm on the held-out objects, beside what the loop kept."""
    base = report["baseline"]
    head = "| policy | kept | kept IoU3D | kept KPA-3D | kept answer | " + " | ".join(REPORTED) + " | swap gap IoU3D |"
    rows = [head, "|" + "---|" * (len(REPORTED) + 6)]
    cell = lambda held, m: f"{held[m]:.3f}" if m in held else ""  # noqa: E731

    rows.append(
        f"| baseline | | | | | {' | '.join(cell(base, m) for m in REPORTED)} | {cell(base, 'swap_gap_iou3d')} |"
    )
    for arm, loops in report["arms"].items():
        for s in loops:
            q, held = s["kept_quality"], s["held_out"]
            rows.append(
                f"| {arm} loop {s['loop']} | {s['kept']}/{s['clouds']} | {cell(q, 'iou3d')} | {cell(q, 'kpa3d')} | "
                f"{cell(q, 'answer_acc')} | {' | '.join(cell(held, m) for m in REPORTED)} | "
                f"{cell(held, 'swap_gap_iou3d')} |"
            )
    lines = [
        "# PiSA data engine",
        "",
        f"Held-out: {base['n']} objects ({base['held_out']}); clouds annotated: {report['clouds']}. 'kept' columns: "
        "the kept annotations scored against the clouds' own targets, which the engine never reads.",
        "",
        *rows,
        "",
    ]
    for arm, loops in report["arms"].items():
        if arm == "pisa":
            for s in loops:
                lines.append(f"Stage 2 decisions, loop {s['loop']}:")
                lines += [
                    f"- {field}: " + ", ".join(f"{why} {n}" for why, n in counts.items())
                    for field, counts in s["decisions"].items()
                ]
                lines.append("")
    return "\n".join(lines)
