"""Evaluate a policy on a split: generate, score with `rewards`, report geometry, answers, text and 3D reliance.

The encoder-reliance gap (after "Does your 3D encoder really work?"): the same metrics with each point cloud 3D-masked
(SPA's FPS + kNN group masking) and with another object's cloud swapped in. A policy that ignores its 3D input shows no
gap. `pointrl eval --policy DIR --data DIR --out FILE.json` is the command; `evaluate` takes any answerer (a function
from samples to output texts), so the same code scores a PointVLM, a fake oracle or a baseline.
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

from data3d import BenchmarkDataset, Sample, reward_sample
from rewards import Quant, score_batch
from rl.batches import corrupt

Answerer = Callable[[list[Sample]], list[str]]

METRICS = ("iou2d", "iou3d", "kpa2d", "kpa3d", "rpc", "answer_acc", "parse_rate")
REWARD_OF_METRIC = {"iou2d": "bbox2d", "iou3d": "bbox3d", "kpa2d": "kpts2d", "kpa3d": "kpts3d", "rpc": "rpc",
                    "answer_acc": "answer", "format_rate": "format"}
TEXT_METRICS = ("bleu", "rougeL")
_NOTHING_PARSED = "no JSON object"


def _description(text: str, span: list[int] | None) -> str:
    return json.loads(text[span[0] : span[1]]) if span else ""


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 13a tokens) and mean ROUGE-L F1 (rouge-score), both in [0, 1]."""
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100.0
    return {"bleu": min(1.0, bleu),  # sacrebleu's percentage can overshoot 100 by an ulp
            "rougeL": float(np.mean(rouge)) if rouge else 0.0}


def score_answers(samples: list[Sample], texts: list[str], quant: Quant | None = None) -> dict[str, float]:
    """Mean field rewards under their metric names, the parse rate and the description's BLEU / ROUGE-L."""
    quant = quant or Quant()
    results = score_batch([reward_sample(s, t) for s, t in zip(samples, texts)], {"bins": quant.bins, "bounds3d": quant.bounds3d})
    report = {metric: float(np.mean([r["rewards"][field] for r in results])) for metric, field in REWARD_OF_METRIC.items()}
    report["parse_rate"] = float(np.mean([not (r["errors"] and r["errors"][0].startswith(_NOTHING_PARSED)) for r in results]))
    hypotheses = [_description(t, r["spans"]["description"]) for t, r in zip(texts, results)]
    report.update(text_metrics(hypotheses, [s.targets.description for s in samples]))
    return report


def swapped_clouds(samples: list[Sample]) -> list[Sample]:
    """Each sample with the point cloud of the next sample of another category (the next sample if all share one)."""
    swapped = []
    for i, sample in enumerate(samples):
        others = [j for j in range(i + 1, i + len(samples)) if samples[j % len(samples)].targets.category != sample.targets.category]
        donor = samples[(others[0] if others else i + 1) % len(samples)]
        swapped.append(dataclasses.replace(sample, points=donor.points))
    return swapped


def evaluate(answer: Answerer, samples: list[Sample], quant: Quant | None = None, reliance: bool = True,
             mask_ratio: float = 0.6, seed: int = 0) -> dict:
    """The report `pointrl eval` writes: METRICS, format_rate, TEXT_METRICS, n and (optionally) `reliance`."""
    if not samples:
        raise ValueError("evaluate: no samples to evaluate")
    report = {**score_answers(samples, answer(samples), quant), "n": len(samples)}
    if reliance:
        masked = score_answers(samples, answer(corrupt(samples, "mask", seed, mask_ratio=mask_ratio)), quant)
        swapped = score_answers(samples, answer(swapped_clouds(samples)), quant)
        report["reliance"] = {
            "masked": masked, "swapped": swapped, "mask_ratio": mask_ratio,
            "gap_masked": {m: report[m] - masked[m] for m in METRICS},
            "gap_swapped": {m: report[m] - swapped[m] for m in METRICS},
        }
    return report


def policy_answerer(policy, batch_size: int = 8, max_new_tokens: int = 320, greedy: bool = True,
                    use_images: bool = True, progress: bool = True, quant: Quant | None = None) -> Answerer:
    """An answerer that runs a PointVLM (greedy by default) in batches, with a progress bar."""
    from tqdm import tqdm

    from rollout.batching import policy_inputs

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
    """The report as a terminal table: one row per condition (clean, masked, swapped)."""
    columns = (*METRICS, *TEXT_METRICS)
    rows = [("clean", report)]
    if "reliance" in report:
        rows += [("3D-masked", report["reliance"]["masked"]), ("cloud swapped", report["reliance"]["swapped"])]
    lines = [f"{'':14}" + "".join(f"{c:>11}" for c in columns)]
    lines += [f"{name:14}" + "".join(f"{values[c]:11.3f}" for c in columns) for name, values in rows]
    return "\n".join(lines)


def write_report(report: dict, out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))


def run_eval(policy_dir: str, data_dir: str, out: str, split: str = "test", limit: int | None = None,
             batch_size: int = 8, max_new_tokens: int = 320, greedy: bool = True, reliance: bool = True,
             use_images: bool = True) -> dict:
    """`pointrl eval`: load a policy directory and a dataset split, evaluate, print the table, write the JSON."""
    from policies import PointVLM

    for path, what in ((policy_dir, "policy"), (data_dir, "dataset")):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no such {what} directory")
    dataset = BenchmarkDataset(data_dir, split)
    samples = [dataset[i] for i in range(min(len(dataset), limit or len(dataset)))]
    policy = PointVLM.from_pretrained(policy_dir).eval()
    report = evaluate(policy_answerer(policy, batch_size, max_new_tokens, greedy, use_images), samples, reliance=reliance)
    report["meta"] = {"policy": str(policy_dir), "data": str(data_dir), "split": split}
    write_report(report, out)
    print(format_table(report))
    print(f"wrote {out} ({len(samples)} samples of {data_dir}:{split})")
    return report
