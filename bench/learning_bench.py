"""Learning result: routed GRPO (GRCA) against broadcast GRPO, both from the same SFT warm-up, on held-out objects.

Runs the demo configuration (`rl/configs/demo.yaml`: a small Point-VLM, procedural data) once through the SFT
warm-up, then each algorithm for the same steps from that policy, and prints the held-out metrics and each one's
ratio to the SFT baseline measured in the same run. About 15 minutes on 2 CPUs; not part of `make test`.

    python bench/learning_bench.py [key=value ...]      (overrides apply to every stage, e.g. run.steps=30)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.tiny import build_tiny_policy  # noqa: E402
from rl.config_loading import load_config  # noqa: E402
from rl.driver import evaluate_policy, init_ray, run_stage, warmup_config  # noqa: E402
from rl.evaluate import METRICS  # noqa: E402


def main(overrides: list[str]) -> None:
    base = load_config("demo.yaml", ["run.dir=runs/learning_bench", "eval.reliance=false", *overrides])
    root = Path(base.run.dir).resolve()
    init_ray(base)
    init = root / "init_policy"
    if not (init / "pointvlm.json").exists():
        build_tiny_policy(
            out_dir=init, seed=base.run.seed, hidden_size=base.policy.hidden_size, num_layers=base.policy.num_layers
        )
    sft = run_stage(warmup_config(base), init, root / "sft")
    reports = {"sft": evaluate_policy(base, sft, root / "eval_sft.json")}
    for algo in ("grca", "grpo"):
        cfg = dataclasses.replace(
            base,
            algo=dataclasses.replace(base.algo, name=algo),
            run=dataclasses.replace(base.run, name=algo, dir=str(root / algo)),
        )
        final = run_stage(cfg, sft, root / algo)
        reports[algo] = evaluate_policy(cfg, final, root / algo / "eval_final.json")
    print(f"\nheld-out metrics ({reports['sft']['meta']['samples']} objects), ratio to the SFT start in brackets:")
    print(f"{'':8}" + "".join(f"{m:>16}" for m in METRICS))
    for name, report in reports.items():
        cells = "".join(f"{report[m]:8.3f} [{report[m] / max(reports['sft'][m], 1e-9):4.2f}x]" for m in METRICS)
        print(f"{name:8}{cells}")
    (root / "summary.json").write_text(
        json.dumps({k: {m: r[m] for m in METRICS} for k, r in reports.items()}, indent=1)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
