"""One RL training step of pointrl (broadcast GRPO and GRCA) beside TRL's GRPOTrainer on equal work, interleaved.

  python bench/step_bench.py [--rounds 3] [--steps 4] [--threads 2] [--tokens 200] [--out runs/bench-step] [--skip-trl]
                             [--llm models/smollm2-135m]
  make bench-step      (builds .venv-bench: the project plus trl==1.16.0, pinned, then runs this with the defaults)
  make bench-step-smollm2   (the same with SmolLM2-135M-Instruct as the LLM: --llm, 2 rounds of 2 steps, 64 tokens)

Equal work in all three arms: the demo policy's shape (`build_tiny_policy`, LLM hidden 128, 4 layers) or, with --llm,
`pointrl init --llm DIR` (full fine-tuning; a frozen untrained point encoder of 32 groups of 16 points, as in
`make demo-real`; points only: `data.use_images=false`), saved once to a temporary folder that pointrl's runs start from
and whose `llm/` TRL loads with the policy's own tokenizer; 4 prompts x G 4 per step, every completion exactly
`--tokens` long (pointrl: `rollout.min_new_tokens = max_new_tokens`; TRL: `generation_kwargs={"min_new_tokens": ...}`
with `max_completion_length`), sampling at temperature 1 without top-k or top-p, AdamW at lr 1e-5 (constant, gradient
clip 1, no KL), float32, no activation checkpointing.

The schedule: one generation, then 2 AdamW steps over the whole batch of 16.
- pointrl: `learner.epochs=2`, `learner.micro_batch_size=16`, `learner.grad_accum=1`.
- TRL 1.16: `per_device_train_batch_size=16` (completions), `gradient_accumulation_steps=1`, `steps_per_generation=1`
  (so `generation_batch_size` = 16 = 4 prompts x `num_generations` 4) and `num_iterations=2`: `_prepare_inputs`
  generates every `steps_per_generation * num_iterations` = 2 optimizer steps and reuses the buffer for the second.
  One pointrl step is therefore two TRL optimizer steps (`max_steps` = 2 x steps). Because 1 % 2 != 0, TRL also runs
  a no-grad forward pass over the batch for the old policy's log-probs (`_generate_and_score_completions`); pointrl
  takes them from the rollout instead (its default, `learner.recompute_old_logprobs=false`).

pointrl runs through its real driver, one process per run (`python rl/train_{grpo,grca}.py --config ...`: a local Ray
cluster, one rollout worker, the reward service on Ray Serve, the learner on Ray Train, weight sync through the object
store), and its phases are the run's own `metrics.jsonl` times. TRL runs in a process of its own
(bench/step_bench_trl.py); a subclass times `_generate` (tokenize, `generate`, decode), `_calculate_rewards` and the
rest of `_generate_and_score_completions` (the old log-prob pass and the advantages), and a TrainerCallback times each
pair of optimizer steps from `on_step_begin` to `on_step_end` (the step; train = step minus generating and scoring).
Threads: TRL's process runs torch on `--threads`; pointrl's rollout worker and learner worker each reserve `--threads`
CPUs, so each runs torch on that many threads (Ray's controller and reward replica on 1). Run it on a quiet machine:
where other processes keep the cores busy, more torch threads than free cores stall at every barrier (one HF `generate`
of this size took 0.9 s with 1 thread and 0.7-18 s with 2 beside two busy processes).

Prompts: pointrl's own (the procedural benchmark's questions, with the point and image positions). TRL's are text
prompts of the same token count (the instruction padded with a filler word): TRL's arm encodes no cloud and no image,
so pointrl does strictly more work per step. TRL's reward function scores each completion with pointrl's reward code
(`rewards.score_batch` on `data3d.reward_sample` of the prompt's own sample, in process) and returns broadcast GRPO's
weighted sum (`rl.config.scalar_reward_weights`). The policy is untrained, so its outputs are rarely JSON and GRCA
has few field spans to route: the GRCA/GRPO ratio here measures the routing's overhead on such outputs.

Rounds run grpo, grca, trl, grpo, ... ; the first step of each run is a warm-up and is left out. Printed: the median
of each phase over the remaining steps with [min-max], and the ratios pointrl-GRPO / TRL (goal <= 0.8x) and GRCA /
GRPO (goal <= 1.05x) as medians of the per-round ratios of the arms' median steps, with their range. All of it goes
to OUT/step_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages, when run as a script from any venv
ARMS = ("grpo", "grca", "trl")
LABELS = {"grpo": "pointrl GRPO", "grca": "pointrl GRCA", "trl": "TRL GRPOTrainer"}
# (row, pointrl's phase, TRL's phase); None: the arm has no such phase
PHASES = [
    ("generate (rollout)", "rollout", "generate"),
    ("  of which in the engine", "rollout_engine", None),
    ("reward", "reward", "reward"),
    ("old log-probs + advantages", None, "score_rest"),
    ("learn: 2 AdamW steps", "learn", "train"),
    ("weight sync", "sync", None),
    ("rest: advantages, spans, Ray", "rest", None),
    ("step", "step", "step"),
]
LR = 1e-5


def pointrl_overrides(args, policy_dir: Path, run_dir: Path) -> list[str]:
    batch = args.prompts * args.group
    return [
        f"policy.init={policy_dir}",
        f"run.dir={run_dir}",
        f"run.steps={args.steps}",
        "run.seed=0",
        f"data.train_size={args.prompts * args.steps}",
        "data.eval_size=1",  # the driver's final evaluation is not timed: keep it short
        "eval.reliance=false",
        "eval.max_new_tokens=8",
        "rollout.num_workers=1",
        f"rollout.cpus_per_worker={args.threads}",
        f"rollout.group_size={args.group}",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.max_new_tokens={args.tokens}",
        f"rollout.min_new_tokens={args.tokens}",
        "rollout.temperature=1.0",
        "learner.num_workers=1",
        f"learner.cpus_per_worker={args.threads}",
        "learner.epochs=2",
        f"learner.micro_batch_size={batch}",
        "learner.grad_accum=1",
        f"learner.lr={LR}",
        f"checkpoint.every={args.steps}",
        *(["data.use_images=false"] if args.llm else []),  # a text LLM from `pointrl init` has no image encoder
    ]


def run_logged(command: list[str], log: Path, env: dict) -> None:
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"{' '.join(command[:2])} failed ({done.returncode}); the end of {log}:\n{tail}")


def run_pointrl(algo: str, args, policy_dir: Path, run_dir: Path, env: dict) -> list[dict]:
    """One run through the driver; the per-step phase times of steps 2.. from its metrics.jsonl."""
    command = [sys.executable, f"rl/train_{algo}.py", "--config", f"rl/configs/{algo}.yaml"]
    run_logged([*command, *pointrl_overrides(args, policy_dir, run_dir)], run_dir.with_suffix(".log"), env)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps, expected = [], args.prompts * args.group * args.tokens
    for row in rows:
        tokens = round(row["rollout/tokens_per_s"] * row["time/rollout"])  # the run logs its rate, not its count
        if tokens != expected:
            sys.exit(f"pointrl's {algo} step {row['step']} generated {tokens} tokens, not {expected}")
    for row in rows[1:]:  # the first step is the warm-up
        times = {name: row[f"time/{name}"] for name in ("rollout", "rollout_engine", "reward", "learn", "sync", "step")}
        times["rest"] = times["step"] - sum(times[n] for n in ("rollout", "reward", "learn", "sync"))
        steps.append(times)
    return steps


def bench_data(args, policy_dir: Path) -> dict:
    """pointrl's prompts of each step (as its runs take them), TRL's text prompts of equal token counts, and what
    TRL's reward function needs to score like pointrl."""
    from data3d import prompt_text
    from policies import PointVLM
    from policies.hf_llm import load_tokenizer
    from rl.config import run_quant, scalar_reward_weights
    from rl.config_loading import load_config
    from rl.runtime.data import training_prompts
    from rollout.batching import policy_inputs

    cfg = load_config("grpo.yaml", pointrl_overrides(args, policy_dir, policy_dir.parent / "unused"))
    data = training_prompts(cfg)
    samples = [s for step in range(args.steps) for s in data.take(step, args.prompts)]
    policy = PointVLM.from_pretrained(policy_dir)
    quant = run_quant(cfg)
    lengths = policy_inputs(policy, samples, quant, cfg.data.use_images).attention_mask.sum(1).tolist()
    tokenizer = load_tokenizer(policy_dir / "llm")
    prompts = []
    for sample, length in zip(samples, lengths):
        # TRL tokenizes a text prompt with `processing_class(text=...)`: count the same way, one filler token a word
        base = prompt_text(sample, quant)
        filler = length - len(tokenizer(text=[base])["input_ids"][0])
        text = " ".join(["x"] * filler) + "\n" + base
        for _ in range(50):  # a filler word is one token here; a few passes at most mend a merge at the seam
            count = len(tokenizer(text=[text])["input_ids"][0])
            if count == length:
                break
            text = text[2:] if count > length else "x " + text
        else:
            raise RuntimeError(f"no text prompt of {length} tokens for sample {sample.uid}")
        prompts.append(text)
    return {
        "samples": samples,
        "prompts": prompts,
        "prompt_tokens": lengths,
        "quant": {"bins": quant.bins, "bounds3d": [list(b) for b in quant.bounds3d]},
        "weights": scalar_reward_weights(cfg),
    }


def run_trl(args, data: dict, policy_dir: Path, run_dir: Path, env: dict) -> list[dict]:
    """One TRL run in a process of its own; the per-step phase times of steps 2..."""
    spec, result = run_dir.with_suffix(".pkl"), run_dir.with_suffix(".json")
    paths = {"policy_dir": str(policy_dir), "out_dir": str(run_dir), "result": str(result)}
    spec.write_bytes(pickle.dumps({"args": args, "data": data, "lr": LR, **paths}))
    run_logged([sys.executable, str(ROOT / "bench" / "step_bench_trl.py"), str(spec)], run_dir.with_suffix(".log"), env)
    outcome = json.loads(result.read_text())
    if outcome["completion_lengths"] != [args.tokens] or outcome["threads"] != args.threads:
        sys.exit(f"TRL's completions or threads are not what was asked: {outcome}")
    return outcome["steps"]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(rounds: list[dict], top: str, bottom: str) -> dict | None:
    """The median over rounds of the ratio of the two arms' median steps in that round (both ran back to back)."""
    pairs = [
        statistics.median(s["step"] for s in r[top]) / statistics.median(s["step"] for s in r[bottom])
        for r in rounds
        if r.get(top) and r.get(bottom)
    ]
    return {**summary(pairs), "per_round": pairs} if pairs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (grpo, grca, trl each)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of TRL, pointrl's rollout and learner")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens of every completion")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-step")
    parser.add_argument("--llm", type=Path, help="an HF causal LM folder as the policy's LLM (full fine-tuning)")
    parser.add_argument("--skip-trl", action="store_true", help="pointrl's arms only (no trl needed)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step of each run is a warm-up")
    arms = [a for a in ARMS if a != "trl" or not args.skip_trl]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OMP_NUM_THREADS")}  # Ray sets threads
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="step-bench-") as tmp:
        work = Path(tmp)
        policy_dir = work / "policy"
        llm = build_policy(args, policy_dir)
        data = bench_data(args, policy_dir)
        rounds: list[dict] = []
        for r in range(args.rounds):
            rounds.append({})
            for arm in arms:
                began = time.perf_counter()
                if arm == "trl":
                    rounds[r][arm] = run_trl(args, data, policy_dir, work / f"r{r}-trl", env)
                else:
                    rounds[r][arm] = run_pointrl(arm, args, policy_dir, work / f"r{r}-{arm}", env)
                step = statistics.median(s["step"] for s in rounds[r][arm])
                print(
                    f"round {r + 1}/{args.rounds} {LABELS[arm]:<16} median step {step:.3f} s "
                    f"({time.perf_counter() - began:.0f} s with start and stop)",
                    flush=True,
                )
    report(args, arms, rounds, data, llm, load_before)


def build_policy(args, policy_dir: Path) -> dict:
    """The policy every arm starts from, written to `policy_dir`; its LLM's shape."""
    if args.llm:
        from policies import PointVLM
        from rl.cli.main import main as pointrl

        # the demo-real prompt's 33 point tokens (32 groups of 16 points), not PointLLM's 513: TRL's arm, whose text
        # prompts match pointrl's token counts, ran out of this machine's 24 GiB with those
        pointrl(
            ["init", "--llm", str(args.llm), "--point-groups", "32", "--group-size", "16", "--out", str(policy_dir)]
        )
        policy = PointVLM.from_pretrained(policy_dir)
    else:
        from policies.tiny import build_tiny_policy

        policy = build_tiny_policy(out_dir=policy_dir, seed=0, hidden_size=128, num_layers=4)
    config = policy.llm.config
    return {
        "name": Path(args.llm).name if args.llm else "the demo's shape",
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "params": sum(p.numel() for p in policy.llm.parameters()),
    }


def report(args, arms: list[str], rounds: list[dict], data: dict, llm: dict, load_before) -> None:
    phases = {}
    for arm in arms:
        pooled = [s for r in rounds for s in r[arm]]
        phases[arm] = {key: summary([s[key] for s in pooled]) for key in pooled[0]}
    ratios = {"grpo_over_trl": ratio(rounds, "grpo", "trl"), "grca_over_grpo": ratio(rounds, "grca", "grpo")}
    kept = args.steps - 1
    tokens = data["prompt_tokens"]
    print(
        f"\nstep benchmark: LLM {llm['name']}, hidden {llm['hidden']}, {llm['layers']} layers "
        f"({llm['params'] / 1e6:.2f}M parameters), {args.prompts} prompts "
        f"({min(tokens)}-{max(tokens)} prompt tokens) x G {args.group}, {args.tokens} new tokens each, one generation "
        f"then 2 AdamW steps; torch threads per worker: {args.threads}; interleaved rounds: {args.rounds} of "
        f"{args.steps} steps per arm, the first of each run left out: {args.rounds * kept} steps per arm"
    )
    print(f"{'seconds: median [min-max]':<30}" + "".join(f"{LABELS[a]:>24}" for a in arms))
    for label, ours, theirs in PHASES:
        cells = []
        for arm in arms:
            key = theirs if arm == "trl" else ours
            s = phases[arm].get(key) if key else None
            cells.append(f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]" if s else "-")
        print(f"{label:<30}" + "".join(f"{c:>24}" for c in cells))
    for key, text, goal in (("grpo_over_trl", "pointrl GRPO / TRL", 0.8), ("grca_over_grpo", "GRCA / GRPO", 1.05)):
        if ratios[key]:
            q = ratios[key]
            print(
                f"{text:<20} {q['median']:.2f}x [{q['min']:.2f}-{q['max']:.2f}] over {q['n']} rounds "
                f"(median of the per-round ratios of median steps; goal <= {goal}x)"
            )
    out = args.out / "step_bench.json"
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
    out.write_text(
        json.dumps(
            {
                "settings": {**settings, "llm": llm, "prompt_tokens": tokens, "cpus": os.cpu_count()},
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "phases": phases,
                "ratios": ratios,
                "rounds": rounds,
            },
            indent=1,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
