"""Evaluate a policy on a split: generate, score with `rewards`, report geometry, answers, text and 3D reliance.

The encoder-reliance gap (after "Does your 3D encoder really work?"): the same metrics with each point cloud 3D-masked
(SPA's group masking) and with another object's cloud swapped in. A policy that ignores its 3D input shows no gap. With
the image there, a policy can answer from the picture and show no gap although it reads the cloud when it must; so the
three conditions are also run with the image blanked (an all-zero image, so the prompt is laid out as before).
`pointrl eval --policy DIR --data DIR --out FILE.json` is the command; `evaluate` takes any answerer (a function from
samples to output texts), so the same code scores a PointVLM, a fake oracle or a baseline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sacrebleu
import torch
from rouge_score import rouge_scorer

from data3d import BenchmarkDataset, Sample, reward_sample, target_text
from data3d.settings import SETTINGS_FILE, check_compatible, dataset_settings, load_settings
from rewards import Quant, score_batch
from rl.algorithms.spa import corrupt

Answerer = Callable[[list[Sample]], list[str]]

METRICS = ("iou2d", "iou3d", "kpa2d", "kpa3d", "rpc", "answer_acc", "parse_rate")
REWARD_OF_METRIC = {
    "iou2d": "bbox2d",
    "iou3d": "bbox3d",
    "kpa2d": "kpts2d",
    "kpa3d": "kpts3d",
    "rpc": "rpc",
    "answer_acc": "answer",
    "format_rate": "format",
}
TEXT_METRICS = ("bleu", "rougeL")
SUITES = ("geometry", "3dcqa", "all")  # `pointrl eval --suite`: the JSON fields, 3DCQA (rl/eval/cqa.py) or both
_NOTHING_PARSED = "no JSON object"


def _description(text: str, span: list[int] | None) -> str:
    return json.loads(text[span[0] : span[1]]) if span else ""


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 13a tokens) and mean ROUGE-L F1 (rouge-score), both in [0, 1]."""
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100.0
    return {
        "bleu": min(1.0, bleu),  # sacrebleu's percentage can overshoot 100 by an ulp
        "rougeL": float(np.mean(rouge)) if rouge else 0.0,
    }


def score_texts(samples: list[Sample], texts: list[str], quant: Quant | None = None) -> list[dict]:
    """The reward service's result (rewards, spans, errors) of each sample's answer text, scored in process."""
    quant = quant or Quant()
    return score_batch(
        [reward_sample(s, t) for s, t in zip(samples, texts)], {"bins": quant.bins, "bounds3d": quant.bounds3d}
    )


def object_scores(
    samples: list[Sample], texts: list[str], quant: Quant | None = None, results: list[dict] | None = None
) -> dict[str, list[float]]:
    """Per sample, each metric of REWARD_OF_METRIC and the parse rate (1 when a JSON object was found): the values
    whose means `score_answers` reports, kept apart for statistics over objects (bench/study.py's bootstrap)."""
    results = results if results is not None else score_texts(samples, texts, quant)
    scores = {metric: [float(r["rewards"][field]) for r in results] for metric, field in REWARD_OF_METRIC.items()}
    scores["parse_rate"] = [float(not (r["errors"] and r["errors"][0].startswith(_NOTHING_PARSED))) for r in results]
    return scores


def score_answers(
    samples: list[Sample], texts: list[str], quant: Quant | None = None, results: list[dict] | None = None
) -> dict:
    """Mean field rewards under their metric names, the parse rate, the description's BLEU / ROUGE-L, and under
    `answer_by_question` the answer accuracy and count of each question type (`match` is relevance discrimination);
    `results`: the texts' `score_texts`, when the caller has them."""
    results = results if results is not None else score_texts(samples, texts, quant)
    report = {
        metric: float(np.mean(values)) for metric, values in object_scores(samples, texts, quant, results).items()
    }
    hypotheses = [_description(t, r["spans"]["description"]) for t, r in zip(texts, results)]
    report.update(text_metrics(hypotheses, [s.targets.description for s in samples]))
    correct: dict[str, list[float]] = {}
    for sample, result in zip(samples, results):
        correct.setdefault(sample.question_type, []).append(result["rewards"]["answer"])
    report["answer_by_question"] = {
        kind: {"accuracy": float(np.mean(v)), "n": len(v)} for kind, v in sorted(correct.items())
    }
    return report


def ground_truth_ceiling(samples: list[Sample], quant: Quant | None = None) -> dict[str, float]:
    """What a perfect answer scores on these samples: each one's ground truth, serialized as the policy is taught to
    write it (`target_text`, quantized with `quant`), through the same reward code. The boxes and keypoints sit near 1,
    RPC does not: the projection of an axis-aligned 3D box covers more than the tight 2D box of the object's mask in
    most views of an irregular shape, so an RPC figure means something only beside this, per dataset."""
    report = score_answers(samples, [target_text(s, quant) for s in samples], quant)
    return {metric: report[metric] for metric in (*METRICS, "format_rate")}


def format_ceiling(report: dict) -> str:
    """The ceiling of a report as one line."""
    values = "  ".join(f"{metric} {value:.3f}" for metric, value in report["ceiling"].items())
    return f"ground-truth ceiling (what a perfect answer scores on these samples): {values}"


def swapped_clouds(samples: list[Sample]) -> list[Sample]:
    """Each sample with the point cloud of the next sample of another category (the next sample if all share one)."""
    swapped = []
    for i, sample in enumerate(samples):
        others = [
            j
            for j in range(i + 1, i + len(samples))
            if samples[j % len(samples)].targets.category != sample.targets.category
        ]
        donor = samples[(others[0] if others else i + 1) % len(samples)]
        swapped.append(dataclasses.replace(sample, points=donor.points))
    return swapped


def blanked_images(samples: list[Sample]) -> list[Sample]:
    """Each sample with an all-zero uint8 image of its image's size (a sample without one stays without): the
    prompt keeps its image block, so only what the picture shows changes."""
    return [dataclasses.replace(s, image=None if s.image is None else np.zeros_like(s.image)) for s in samples]


def _cloud_reliance(
    answer: Answerer, samples: list[Sample], clean: dict, quant: Quant | None, mask_ratio: float, seed: int
) -> dict:
    """The metrics with each cloud 3D-masked and swapped, and their gaps to `clean` (scored on the same samples)."""
    masked = score_answers(samples, answer(corrupt(samples, "mask", seed, mask_ratio=mask_ratio)), quant)
    swapped = score_answers(samples, answer(swapped_clouds(samples)), quant)
    return {
        "masked": masked,
        "swapped": swapped,
        "gap_masked": {m: clean[m] - masked[m] for m in METRICS},
        "gap_swapped": {m: clean[m] - swapped[m] for m in METRICS},
    }


def evaluate(
    answer: Answerer,
    samples: list[Sample],
    quant: Quant | None = None,
    reliance: bool = True,
    mask_ratio: float = 0.6,
    seed: int = 0,
    blank_images: bool = True,
) -> dict:
    """The report `pointrl eval` writes: METRICS, format_rate, TEXT_METRICS, n, `ceiling` (`ground_truth_ceiling`: the
    same metrics for a perfect answer) and (optionally) `reliance`: the 3D-masked and cloud-swapped metrics and gaps
    with the image, and under `image_blanked` the same three conditions (clean, masked, swapped) with a blank image,
    whose gaps measure the cloud where the picture cannot stand in; `blank_images=False` leaves those out, for an
    answerer that reads no image (they would repeat the others)."""
    if not samples:
        raise ValueError("evaluate: no samples to evaluate")
    report = {**score_answers(samples, answer(samples), quant), "n": len(samples)}
    report["ceiling"] = ground_truth_ceiling(samples, quant)
    if reliance:
        report["reliance"] = {
            **_cloud_reliance(answer, samples, report, quant, mask_ratio, seed),
            "mask_ratio": mask_ratio,
        }
    if reliance and blank_images:
        blank = blanked_images(samples)
        blank_clean = score_answers(samples, answer(blank), quant)
        report["reliance"]["image_blanked"] = {
            "clean": blank_clean,
            **_cloud_reliance(answer, blank, blank_clean, quant, mask_ratio, seed),
        }
    return report


def reads_images(policy, use_images: bool) -> bool:
    """Whether a policy is given the images: when asked and when it has an image encoder to read them."""
    return use_images and policy.config.image is not None


def policy_answerer(
    policy,
    batch_size: int = 8,
    max_new_tokens: int = 320,
    greedy: bool = True,
    use_images: bool = True,
    progress: bool = True,
    quant: Quant | None = None,
) -> Answerer:
    """An answerer that runs a PointVLM (greedy by default) in batches, with a progress bar; the images reach only a
    policy with an image encoder."""
    from tqdm import tqdm

    from rollout.batching import policy_inputs

    use_images = reads_images(policy, use_images)

    def answer(samples: list[Sample]) -> list[str]:
        texts = []
        batches = range(0, len(samples), batch_size)
        with torch.no_grad():
            for start in tqdm(batches, desc="generate", unit="batch", disable=not progress, leave=False):
                inputs = policy_inputs(policy, samples[start : start + batch_size], quant, use_images)
                out = policy.generate(inputs, do_sample=not greedy, max_new_tokens=max_new_tokens, seed=0)
                texts.extend(out.texts)
        return texts

    return answer


def format_table(report: dict) -> str:
    """The report as a terminal table: one row per condition (clean, masked, swapped; then the same, image blanked)."""
    columns = (*METRICS, *TEXT_METRICS)
    rows = [("clean", report)]
    if "reliance" in report:
        rows += [("3D-masked", report["reliance"]["masked"]), ("cloud swapped", report["reliance"]["swapped"])]
    if "image_blanked" in report.get("reliance", {}):
        blank = report["reliance"]["image_blanked"]
        rows += [
            ("image blanked", blank["clean"]),
            ("blank, 3D-masked", blank["masked"]),
            ("blank, swapped", blank["swapped"]),
        ]
    lines = [f"{'':18}" + "".join(f"{c:>11}" for c in columns)]
    lines += [f"{name:18}" + "".join(f"{values[c]:11.3f}" for c in columns) for name, values in rows]
    by_question = report.get("answer_by_question", {})
    swapped = report.get("reliance", {}).get("swapped", {}).get("answer_by_question", {})
    lines.append(
        "answer accuracy by question (clean / cloud swapped): "
        + ", ".join(
            f"{kind} {v['accuracy']:.3f}"
            + (f" / {swapped[kind]['accuracy']:.3f}" if kind in swapped else "")
            + f" (n={v['n']})"
            for kind, v in by_question.items()
        )
    )
    return "\n".join(lines)


def format_comparison(reports: dict[str, dict]) -> str:
    """Policies side by side (one row each): the metrics, then what swapping the cloud takes away from IoU3D and the
    answer, with the image and with it blanked (the gaps that show the cloud is read)."""
    gaps = (
        ("iou3d gap", "iou3d", False),
        ("answer gap", "answer_acc", False),
        ("iou3d gap, blank", "iou3d", True),
        ("answer gap, blank", "answer_acc", True),
    )
    lines = [f"{'':10}" + "".join(f"{c:>11}" for c in METRICS) + "".join(f"{name:>19}" for name, _, _ in gaps)]
    for name, report in reports.items():
        reliance = report.get("reliance")
        row = f"{name:10}" + "".join(f"{report[c]:11.3f}" for c in METRICS)
        for _, metric, blank in gaps:
            source = (reliance.get("image_blanked") if blank else reliance) if reliance else None
            row += f"{source['gap_swapped'][metric]:19.3f}" if source else f"{'-':>19}"
        lines.append(row)
    return "\n".join(lines)


def write_report(report: dict, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))


def load_policy_and_split(policy_dir: str, data_dir: str, split: str, limit: int | None):
    """A policy directory and the first `limit` samples of a dataset split, refused in one line when the dataset was
    written with other data settings than the policy was trained on; returns (policy, samples, settings)."""
    from policies import PointVLM

    for path, what in ((policy_dir, "policy"), (data_dir, "dataset")):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no such {what} directory")
    dataset = BenchmarkDataset(data_dir, split)
    data = dataset_settings(dataset.meta)
    settings = load_settings(policy_dir)
    if settings is None:
        print(f"{policy_dir} records no data settings ({SETTINGS_FILE}); scoring with the dataset's: {data}")
        settings = data
    check_compatible(settings, data, policy_dir, data_dir)
    samples = [dataset[i] for i in range(min(len(dataset), limit or len(dataset)))]
    return PointVLM.from_pretrained(policy_dir).eval(), samples, settings


def run_eval(
    policy_dir: str,
    data_dir: str,
    out: str,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 320,
    greedy: bool = True,
    reliance: bool = True,
    use_images: bool = True,
    suite: str = "geometry",
) -> dict:
    """`pointrl eval`: load a policy directory and a dataset split, evaluate (`suite`: one of SUITES), print the
    tables, write the JSON (the 3DCQA suite under its key "3dcqa")."""
    if suite not in SUITES:
        raise ValueError(f"suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    policy, samples, settings = load_policy_and_split(policy_dir, data_dir, split, limit)
    quant = settings.quant()
    use_images = reads_images(policy, use_images)
    report = {}
    if suite in ("geometry", "all"):
        answerer = policy_answerer(policy, batch_size, max_new_tokens, greedy, use_images, quant=quant)
        report = evaluate(answerer, samples, quant, reliance=reliance, blank_images=use_images)
        print(format_table(report))
        print(format_ceiling(report))
    if suite in ("3dcqa", "all"):
        from rl.eval.cqa import CQA_MAX_NEW_TOKENS, evaluate_cqa, format_cqa

        answerer = policy_answerer(policy, batch_size, CQA_MAX_NEW_TOKENS, greedy, use_images, quant=quant)
        report["3dcqa"] = evaluate_cqa(answerer, samples)
        print(format_cqa(report["3dcqa"]))
    report["meta"] = {
        "policy": str(policy_dir),
        "data": str(data_dir),
        "split": split,
        "suite": suite,
        "settings": settings.to_dict(),
    }
    write_report(report, out)
    print(f"wrote {out} ({len(samples)} samples of {data_dir}:{split})")
    return report
