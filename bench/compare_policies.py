"""Policies against a base policy on the same held-out objects, object by object: each metric's paired difference with
its 95% bootstrap CI over the objects, and each 3D box coordinate's mean signed and absolute error in bins (a
systematic shift of a coordinate, which a mean IoU hides). With --mix A, each policy is also compared at (1 - A) x
base + A x policy, its weights interpolated with the base's (WiSE-FT, Wortsman et al. 2022; WARP's interpolation
towards the initialization). With --pool the policies are the seeds of one arm: their scores are also pooled, each
metric's mean and paired difference with its 95% bootstrap CI over seeds and objects (`bench.study.bootstrap_ci`).

    python bench/compare_policies.py BASE POLICY [POLICY ...] [--mix 0.5] [--pool] [--config demo.yaml] [key=value ...]

The held-out objects are the run configuration's (the demo's: 256 generated with seed 1), decoded greedily.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.study import STUDY_METRICS, bootstrap_ci, paired_difference  # noqa: E402
from data3d.serialize import target_fields  # noqa: E402
from rl.config import run_quant  # noqa: E402
from rl.config_loading import load_config  # noqa: E402
from rl.eval.evaluate import object_scores  # noqa: E402
from rl.runtime.data import held_out_samples  # noqa: E402
from rl.runtime.driver import held_out_answerer  # noqa: E402

WEIGHT_FILES = ("vision.safetensors", "llm/model.safetensors")


def interpolated(base: Path, policy: Path, alpha: float, out: Path) -> Path:
    """A copy of `policy` whose float weights are (1 - alpha) x base's + alpha x its own (the same architecture)."""
    shutil.copytree(policy, out)
    for name in WEIGHT_FILES:
        start, end = load_file(base / name), load_file(policy / name)
        if start.keys() != end.keys():
            raise SystemExit(f"--mix: {base} and {policy} hold different tensors in {name}")
        mixed = {k: (start[k].double() * (1 - alpha) + v.double() * alpha).to(v.dtype) for k, v in end.items()}
        save_file({k: mixed[k] if v.is_floating_point() else v for k, v in end.items()}, out / name, {"format": "pt"})
    return out


def box_errors(samples, texts: list[str], quant) -> np.ndarray:
    """(parsed answers, 6) predicted minus true bbox3d in bins, for the answers whose JSON holds a 6-number box."""
    errors = []
    for sample, text in zip(samples, texts):
        try:
            box = json.loads(text[text.index("{") : text.rindex("}") + 1])["bbox3d"]
            errors.append(np.subtract(box, target_fields(sample, quant)["bbox3d"], dtype=float))
        except (ValueError, KeyError, TypeError):
            continue
    return np.array(errors).reshape(-1, 6)


def difference_text(scores: np.ndarray, base) -> str:
    """Scores [seeds, objects] minus the base's per-object scores: "(mean [95% CI])" (`bench.study.paired_difference`;
    over the objects alone for one seed)."""
    mean, low, high = paired_difference(scores, base)
    return f"({mean:+.4f} [{low:+.4f}, {high:+.4f}])"


def report(name: str, scores: dict, base: dict, errors: np.ndarray) -> str:
    cells = []
    for metric in STUDY_METRICS:
        one_seed = np.asarray(scores[metric], dtype=float)[None]  # [1, objects]
        cells.append(f"{metric} {one_seed.mean():.4f} {difference_text(one_seed, base[metric])}")
    coordinates = ("xmin", "ymin", "zmin", "xmax", "ymax", "zmax")
    shift = " ".join(f"{c} {e:+.2f}" for c, e in zip(coordinates, errors.mean(0)))
    spread = " ".join(f"{c} {e:.2f}" for c, e in zip(coordinates, np.abs(errors).mean(0)))
    boxes = f"bbox3d error in bins over {len(errors)} parsed boxes: mean {shift}; mean absolute {spread}"
    return f"{name}\n  " + "\n  ".join(cells) + f"\n  {boxes}"


def pooled(runs: list[dict], base: dict) -> str:
    """The runs (each metric's per-object scores) as seeds of one arm: the mean and the paired difference to `base`
    of each metric, each with its 95% bootstrap CI over seeds and objects."""
    cells = []
    for metric in STUDY_METRICS:
        scores = np.array([run[metric] for run in runs], dtype=float)  # [seeds, objects]
        low, high = bootstrap_ci(scores)
        cells.append(f"{metric} {scores.mean():.4f} [{low:.4f}, {high:.4f}] {difference_text(scores, base[metric])}")
    return f"pooled over {len(runs)} seeds\n  " + "\n  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("policies", type=Path, nargs="+")
    parser.add_argument("--mix", type=float, help="also compare (1 - MIX) x base + MIX x each policy, 0 < MIX < 1")
    parser.add_argument("--pool", action="store_true", help="the policies are seeds of one arm: also pool them")
    parser.add_argument("--config", default="demo.yaml")
    args, overrides = parser.parse_known_args()
    if args.mix is not None and not 0 < args.mix < 1:
        raise SystemExit(f"--mix must lie strictly between 0 and 1, got {args.mix}")
    cfg = load_config(args.config, ["eval.reliance=false", *overrides])
    samples, quant = held_out_samples(cfg), run_quant(cfg)

    def measured(policy: Path) -> tuple[dict, np.ndarray]:
        texts = held_out_answerer(cfg, policy)(samples)
        return object_scores(samples, texts, quant), box_errors(samples, texts, quant)

    base, base_errors = measured(args.base)
    print(f"{len(samples)} held-out objects; differences are against {args.base} (paired, 95% bootstrap CI)")
    print(report(str(args.base), base, base, base_errors))
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, policy in enumerate(args.policies):
            scores, errors = measured(policy)
            runs.append(scores)
            print(report(str(policy), scores, base, errors))
            if args.mix is not None:
                mixed = interpolated(args.base, policy, args.mix, Path(scratch) / str(index))
                scores, errors = measured(mixed)
                print(report(f"{args.mix:g} x {policy} + {1 - args.mix:g} x base", scores, base, errors))
    if args.pool:
        print(pooled(runs, base))


if __name__ == "__main__":
    main()
