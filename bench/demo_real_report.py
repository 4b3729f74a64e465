"""`make demo-real`'s report: its SFT and GRCA policies (SmolLM2-135M under LoRA) on 256 fresh objects, GRCA against
its SFT start object by object, the floors of issue 26, and the alignment tax (GRCA's Table 4).

    python bench/demo_real_report.py [--sft runs/demo-real-sft/policy] [--grca runs/demo-real/policy]
                                     [--llm models/smollm2-135m] [--seed 20261207] [--out runs/demo-real/report]
                                     [--config demo_real.yaml] [key=value ...]

The fresh objects are the test split of `pointrl synth --n 320 --test-fraction 0.8 --seed SEED` at the policies'
data settings: a seed no stage trained on (training uses seed 0, the runs' previews seed 1). Each policy answers
greedily with the run's evaluation settings (demo_real.yaml), once as is and once with every cloud swapped for
another object's (`rl.eval.evaluate.swapped_clouds`: what reading the cloud is worth). The tax is the perplexity of
the LLM alone on a fixed English text (`rl.eval.tax`) before SFT, after SFT and after GRCA, beside the descriptions'
BLEU and ROUGE-L. `<out>/report.json` and `report.md` hold the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.real_bench import data_flags  # noqa: E402
from bench.study import STUDY_METRICS, paired_difference  # noqa: E402

# issue 26's floors on the GRCA policy: (metric, smallest value)
FLOORS = (("parse_rate", 0.95), ("iou3d", 0.5), ("kpa3d", 0.7), ("swap_cost_iou3d", 0.1))


def fresh_objects(out: Path, policy: Path, seed: int, n: int) -> Path:
    """`pointrl synth` of n objects (a fifth for training, never used) at the policy's data settings, written once."""
    from data3d.settings import load_settings
    from rl.cli.main import main as pointrl

    data = out / f"fresh-seed{seed}"
    if not (data / "meta.json").is_file():
        settings = load_settings(policy)
        if settings is None:
            sys.exit(f"demo_real_report: {policy} records no data settings (data_settings.json): give a trained policy")
        pointrl(["synth", "--out", str(data), "--n", str(n), "--test-fraction", "0.8", "--seed", str(seed),
                 *data_flags(settings)])  # fmt: skip
    return data


def measured(cfg, policy: Path, samples: list) -> dict:
    """The policy's per-object scores on `samples` as they are and with the clouds swapped, and the mean report."""
    from rl.config import run_quant
    from rl.eval.evaluate import object_scores, score_answers, score_texts, swapped_clouds
    from rl.runtime.driver import held_out_answerer

    quant, answer = run_quant(cfg), held_out_answerer(cfg, policy)
    texts = answer(samples)
    swapped = score_answers(samples, answer(swapped_clouds(samples)), quant)
    results = score_texts(samples, texts, quant)  # scored once for the per-object scores and their means
    return {
        "objects": object_scores(samples, texts, quant, results),
        "report": score_answers(samples, texts, quant, results),
        "swapped": {m: swapped[m] for m in STUDY_METRICS},
    }


def difference(scores: dict, base: dict) -> dict:
    """Each metric's mean paired difference scores - base over the objects, with its 95% bootstrap CI."""
    out = {}
    for metric in STUDY_METRICS:
        mean, low, high = paired_difference(scores[metric], base[metric])
        out[metric] = {"mean": mean, "ci95": [low, high]}
    return out


def floors(row: dict, gain: dict) -> list[dict]:
    """Each floor with the GRCA policy's value, and GRCA above SFT on KPA-3D with a CI that excludes 0."""
    checks = [{"floor": f"{m} >= {least}", "value": row[m], "met": row[m] >= least} for m, least in FLOORS]
    low = gain["kpa3d"]["ci95"][0]
    checks.append({"floor": "GRCA - SFT on kpa3d, 95% CI above 0", "value": low, "met": low > 0})
    return checks


def markdown(result: dict) -> str:
    rows, gain, tax = result["rows"], result["grca_minus_sft"], result["tax"]
    lines = [f"# `make demo-real` on {result['n']} fresh objects ({result['data']})", ""]
    lines += ["| policy | " + " | ".join(STUDY_METRICS) + " | IoU3D lost to a swapped cloud | BLEU | ROUGE-L |"]
    lines += ["|---|" + "---|" * (len(STUDY_METRICS) + 3)]
    for name, row in rows.items():
        cells = [f"{row[m]:.3f}" for m in (*STUDY_METRICS, "swap_cost_iou3d", "bleu", "rougeL")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    diffs = [f"{gain[m]['mean']:+.3f} [{gain[m]['ci95'][0]:+.3f}, {gain[m]['ci95'][1]:+.3f}]" for m in STUDY_METRICS]
    lines += [f"| GRCA - SFT (95% CI) | {' | '.join(diffs)} | | | |", ""]
    lines += ["| alignment tax | SmolLM2-135M-Instruct | after SFT | after GRCA |", "|---|---|---|---|"]
    lines += [f"| perplexity on rl/eval/english.txt | {tax['llm']:.2f} | {tax['sft']:.2f} | {tax['grca']:.2f} |", ""]
    lines += ["| floor (GRCA policy) | value | met |", "|---|---|---|"]
    lines += [f"| {c['floor']} | {c['value']:.3f} | {'yes' if c['met'] else 'no'} |" for c in result["floors"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", type=Path, default=Path("runs/demo-real-sft/policy"))
    parser.add_argument("--grca", type=Path, default=Path("runs/demo-real/policy"))
    parser.add_argument("--llm", type=Path, default=Path("models/smollm2-135m"), help="the LLM before SFT")
    parser.add_argument("--config", default="demo_real.yaml", help="the run configuration (evaluation settings)")
    parser.add_argument("--seed", type=int, default=20261207, help="seed of the fresh objects")
    parser.add_argument("--n", type=int, default=320, help="objects synthesized; 80%% are the test split")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-real/report"))
    args, overrides = parser.parse_known_args(argv)  # key=value: the configuration's, as on a run's command line
    for path in (args.sft, args.grca):
        if not (path / "pointvlm.json").is_file():
            sys.exit(f"demo_real_report: {path} is not a policy directory (no pointvlm.json); run `make demo-real`")
    if not (args.llm / "config.json").is_file():
        sys.exit(f"demo_real_report: --llm {args.llm} is not a Hugging Face model folder (no config.json)")
    from rl.config import ConfigError
    from rl.config_loading import load_config
    from rl.eval.tax import llm_perplexity
    from rl.runtime.data import held_out_samples

    try:  # checked before anything is generated or decoded
        load_config(args.config, overrides)
    except ConfigError as exc:
        sys.exit(f"demo_real_report: {exc}")
    data = fresh_objects(args.out, args.grca, args.seed, args.n)
    cfg = load_config(args.config, [*overrides, f"data.dir={data}", "eval.split=test", f"data.eval_size={args.n}"])
    samples = held_out_samples(cfg)
    runs = {}
    for name, policy in (("SFT", args.sft), ("GRCA", args.grca)):
        print(f"{name}: {policy} on {len(samples)} objects, as they are and with the clouds swapped", flush=True)
        runs[name] = measured(cfg, policy, samples)
    rows = {
        name: {
            **{m: run["report"][m] for m in (*STUDY_METRICS, "bleu", "rougeL")},
            "swap_cost_iou3d": run["report"]["iou3d"] - run["swapped"]["iou3d"],
        }
        for name, run in runs.items()
    }
    gain = difference(runs["GRCA"]["objects"], runs["SFT"]["objects"])
    tax = {
        "llm": llm_perplexity(args.llm),
        "sft": llm_perplexity(args.sft / "llm"),
        "grca": llm_perplexity(args.grca / "llm"),
    }
    result = {
        "n": len(samples),
        "data": f"{data}:test",
        "seed": args.seed,
        "rows": rows,
        "grca_minus_sft": gain,
        "tax": tax,
        "floors": floors(rows["GRCA"], gain),
        "swapped": {name: run["swapped"] for name, run in runs.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(result, indent=1))
    (args.out / "report.md").write_text(markdown(result))
    print("\n" + markdown(result))


if __name__ == "__main__":
    main(sys.argv[1:])
