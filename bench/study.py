"""The statistics and outputs of the learning studies (bench/learning_bench.py): a bootstrap CI over seeds and held-out
objects, `study.json`, `study.md` in the layout of GRCA's Table 3 (and, per trained arm, GRCA §3.6's measurement of
the other fields' credit on each geometric field), and `curves.png` (held-out metrics against the step).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the columns of GRCA's Table 3 first, then the rest of what `pointrl eval` reports
STUDY_METRICS = ("iou3d", "kpa3d", "rpc", "iou2d", "kpa2d", "answer_acc", "parse_rate")
CURVE_METRICS = ("iou3d", "kpa3d", "rpc")


def bootstrap_ci(scores: np.ndarray, draws: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean of `scores` [seeds, objects]: each draw resamples the seeds, then the objects (the
    same objects for every seed: they are paired), so the interval holds both the run-to-run and the object-sampling
    variance. With one seed it is the ordinary bootstrap over objects."""
    rng = np.random.default_rng(seed)
    seeds, objects = scores.shape
    means = np.empty(draws)
    for d in range(draws):
        rows = rng.integers(0, seeds, seeds)
        cols = rng.integers(0, objects, objects)
        means[d] = scores[np.ix_(rows, cols)].mean()
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_difference(scores, base) -> tuple[float, float, float]:
    """Scores [seeds, objects] (one seed: [objects]) minus a base policy's per-object scores: the mean difference and
    its 95% CI (`bootstrap_ci`: over seeds and objects, paired)."""
    diff = np.atleast_2d(np.asarray(scores, dtype=float)) - np.asarray(base, dtype=float)[None]
    low, high = bootstrap_ci(diff)
    return float(diff.mean()), low, high


def bootstrap_difference_ci(
    scores: np.ndarray, reference: np.ndarray, draws: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of mean(scores) - mean(reference), both [seeds, objects] over the same objects: each draw
    resamples each arm's seeds on its own (runs of two arms are independent) and the objects once for both (paired)."""
    rng = np.random.default_rng(seed)
    differences = np.empty(draws)
    for d in range(draws):
        cols = rng.integers(0, scores.shape[1], scores.shape[1])
        arm = scores[np.ix_(rng.integers(0, len(scores), len(scores)), cols)].mean()
        base = reference[np.ix_(rng.integers(0, len(reference), len(reference)), cols)].mean()
        differences[d] = arm - base
    tail = (1.0 - level) / 2.0
    return float(np.quantile(differences, tail)), float(np.quantile(differences, 1.0 - tail))


def difference_table(results: dict[str, list[dict]], reference: str, metrics=CURVE_METRICS) -> list[str]:
    """Each arm minus `reference` per metric: the difference of means and its 95% CI (`bootstrap_difference_ci`)."""
    base = {m: np.array([run["scores"][m] for run in results[reference]]) for m in metrics}
    lines = [
        "",
        f"Each arm minus {reference}: difference of the means [95% bootstrap CI: seeds resampled per arm, objects",
        "paired]; a CI that excludes 0 is a difference these seeds and objects resolve.",
        "",
        "| arm | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for arm, runs in results.items():
        if arm == reference:
            continue
        cells = []
        for m in metrics:
            scores = np.array([run["scores"][m] for run in runs])
            low, high = bootstrap_difference_ci(scores, base[m])
            cells.append(f"{scores.mean() - base[m].mean():+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def summarize(results: dict[str, list[dict]]) -> dict:
    """Per arm: each seed's metric means, and over the seeds the mean and its 95% bootstrap CI. A result is one run's
    `{"seed", "scores": {metric: [per object]}, "curve": [[step, {metric: mean}], ...]}`, for a trained arm
    `"credit": {"other_fields_var/bbox3d": mean over the steps, ...}` (GRCA §3.6), plus optional extras."""
    summary = {}
    for arm, runs in results.items():
        row = {"seeds": [run["seed"] for run in runs], "per_seed": [], "mean": {}, "ci95": {}}
        for run in runs:
            row["per_seed"].append({m: float(np.mean(v)) for m, v in run["scores"].items()})
        for metric in runs[0]["scores"]:
            scores = np.array([run["scores"][metric] for run in runs])  # [seeds, objects]
            row["mean"][metric] = float(scores.mean())
            row["ci95"][metric] = bootstrap_ci(scores)
        credit = [run["credit"] for run in runs if "credit" in run]
        if credit:  # GRCA §3.6, per key the mean over the seeds of each run's mean over its steps
            keys = sorted({key for c in credit for key in c})
            row["credit"] = {key: float(np.mean([c[key] for c in credit if key in c])) for key in keys}
        summary[arm] = row
    return summary


def markdown_table(summary: dict, title: str, objects: int) -> str:
    """Table 3's layout: one row per arm, mean [95% CI] per metric."""
    metrics = [m for m in STUDY_METRICS if m in next(iter(summary.values()))["mean"]]
    extra = [m for m in next(iter(summary.values()))["mean"] if m not in metrics]
    columns = metrics + extra
    lines = [
        f"# {title}",
        "",
        f"Held-out objects: {objects}; seeds per arm in brackets; mean [95% bootstrap CI over seeds and objects].",
        "",
        "| arm | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for arm, row in summary.items():
        cells = [f"{row['mean'][m]:.3f} [{row['ci95'][m][0]:.3f}, {row['ci95'][m][1]:.3f}]" for m in columns]
        lines.append(f"| {arm} ({len(row['seeds'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines + credit_table(summary)) + "\n"


def credit_table(summary: dict) -> list[str]:
    """GRCA §3.6 per trained arm and geometric field: the variance of the part of the field's token advantages that
    the other rewards put there, and its share of their variance (means over steps, then seeds)."""
    arms = {arm: row["credit"] for arm, row in summary.items() if "credit" in row}
    if not arms:
        return []
    fields = sorted({key.removeprefix("other_fields_var/") for c in arms.values() for key in c if "_var/" in key})
    lines = [
        "",
        "Other fields' part of each geometric field's token advantages (GRCA §3.6): its variance over the field's",
        "tokens (its share of their advantage variance), mean over the steps of a run, then over its seeds.",
        "",
        "| arm | " + " | ".join(fields) + " |",
        "|---|" + "---|" * len(fields),
    ]
    for arm, credit in arms.items():
        cells = [
            f"{credit[f'other_fields_var/{f}']:.3f} ({credit.get(f'other_fields_share/{f}', float('nan')):.2f})"
            if f"other_fields_var/{f}" in credit
            else "-"
            for f in fields
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def plot_curves(results: dict[str, list[dict]], out: Path) -> None:
    """Held-out IoU3D, KPA-3D and RPC against the step: per arm the mean over seeds and a band from the lowest to the
    highest seed."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 4))
    for axis, metric in zip(axes, CURVE_METRICS):
        for arm, runs in results.items():
            steps = [step for step, _ in runs[0]["curve"]]
            values = np.array([[point[metric] for _, point in run["curve"]] for run in runs])  # [seeds, points]
            (line,) = axis.plot(steps, values.mean(0), marker="o", label=arm)
            if len(runs) > 1:
                axis.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        axis.set_title(metric)
        axis.set_xlabel("RL step (budget-matched SFT: the same optimizer steps)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_study(results: dict[str, list[dict]], out_dir: Path, title: str, reference: str | None = None) -> dict:
    """study.json (per arm and seed every metric, mean and CI per arm, the curves), study.md and curves.png; with a
    `reference` arm, study.md also has every other arm's difference to it."""
    summary = summarize(results)
    objects = len(next(iter(results.values()))[0]["scores"]["iou3d"])
    curves = {arm: [run["curve"] for run in runs] for arm, runs in results.items()}
    extras = {arm: [run.get("extras", {}) for run in runs] for arm, runs in results.items()}
    study = {"title": title, "objects": objects, "arms": summary, "curves": curves, "extras": extras}
    (out_dir / "study.json").write_text(json.dumps(study, indent=1))
    differences = difference_table(results, reference) if reference else []
    (out_dir / "study.md").write_text(markdown_table(summary, title, objects) + "\n".join(differences) + "\n")
    plot_curves(results, out_dir / "curves.png")
    return study
