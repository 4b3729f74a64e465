"""How much a policy reads its cloud, measured without decoding: the teacher-forced NLL of each field's target tokens
given each object's own cloud and given another object's (`rl.eval.evaluate.swapped_clouds`), and the gap between
them in nats per token. A policy whose answers ignore the cloud has a gap near 0 on bbox3d and kpts3d. The decoded
swap cost (`pointrl eval`'s reliance gap) takes minutes of decoding per policy; this takes two forward passes, so it
can follow a run's checkpoints (issue 26: where SmolLM2's SFT starts to read the cloud, if it does).

    python bench/cloud_reading.py POLICY [POLICY ...] [--config demo_real.yaml] [--out FILE] [key=value ...]

The objects are the configuration's held-out ones (data.dir and eval.split, or generated with the held-out seed;
data.eval_size of them), in batches of eval.batch_size. Printed per policy and field: the mean NLL with the own
cloud, with a swapped one, and the gap with its 95% bootstrap CI over objects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.study import paired_difference  # noqa: E402
from data3d import Sample, target_text  # noqa: E402
from rewards.schema import FIELDS, Quant  # noqa: E402
from rl.algorithms.token_spans import batch_field_masks  # noqa: E402
from rl.config import run_quant  # noqa: E402
from rl.config_loading import load_config  # noqa: E402
from rl.eval.evaluate import score_texts, swapped_clouds  # noqa: E402
from rl.runtime.data import held_out_samples  # noqa: E402
from rollout.batching import policy_inputs  # noqa: E402


def target_tokens(policy, samples: list[Sample], quant: Quant) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Each sample's target answer as the policy's tokens (ids, mask) and, per field, the mask of that field's tokens
    (the reward service's character spans, `batch_field_masks`)."""
    texts = [target_text(s, quant) for s in samples]
    spans = [r["spans"] for r in score_texts(samples, texts, quant)]
    ids, mask = policy.tokenize_responses(texts)
    return ids, mask, batch_field_masks(policy.tokenizer, ids, mask, spans, FIELDS)


@torch.no_grad()
def field_nll(policy, targets: tuple, clouds: list[Sample], quant: Quant, use_images: bool) -> dict:
    """Per field, each object's mean NLL (nats per token) of its target answer's tokens of that field (`targets`:
    `target_tokens`), the policy given `clouds` (the samples themselves, or with other clouds); NaN where the target
    has no such field."""
    ids, mask, owners = targets
    inputs = policy_inputs(policy, clouds, quant, use_images)
    nll = -policy.logprobs(inputs, ids.to(policy.device), mask.to(policy.device)).float().cpu()
    out = {}
    for name in FIELDS:
        tokens = owners[name].float()
        count = tokens.sum(1)
        out[name] = torch.where(count > 0, (nll * tokens).sum(1) / count.clamp(min=1), torch.nan).tolist()
    return out


def cloud_reading(policy, samples: list[Sample], quant: Quant, use_images: bool, batch_size: int) -> dict:
    """Per field: the NLLs with the own clouds and with swapped ones (`swapped_clouds` over all samples), per object;
    each batch's targets are tokenized once for both."""
    swapped = swapped_clouds(samples)
    own: dict[str, list[float]] = {name: [] for name in FIELDS}
    other: dict[str, list[float]] = {name: [] for name in FIELDS}
    for start in range(0, len(samples), batch_size):
        rows = slice(start, start + batch_size)
        targets = target_tokens(policy, samples[rows], quant)
        for result, clouds in ((own, samples[rows]), (other, swapped[rows])):
            for name, values in field_nll(policy, targets, clouds, quant, use_images).items():
                result[name] += values
    return {name: {"own": own[name], "swapped": other[name]} for name in FIELDS}


def summary(reading: dict) -> dict:
    """Per field present in the targets: mean NLL own and swapped, and the gap's mean with its 95% CI over objects."""
    rows = {}
    for name, values in reading.items():
        own, swapped = np.asarray(values["own"]), np.asarray(values["swapped"])
        keep = ~np.isnan(own)
        if not keep.any():
            continue
        gap, low, high = paired_difference(swapped[keep], own[keep])
        rows[name] = {"own": own[keep].mean(), "swapped": swapped[keep].mean(), "gap": gap, "ci": [low, high]}
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", metavar="POLICY|key=value", help="policy directories, then overrides")
    parser.add_argument("--config", default="demo_real.yaml", help="the run configuration the objects come from")
    parser.add_argument("--out", type=Path, help="write the per-policy summaries to this JSON file")
    args = parser.parse_intermixed_args(argv)  # policies and overrides on either side of the options
    overrides = [item for item in args.items if "=" in item]
    args.policies = [item for item in args.items if "=" not in item]
    missing = [p for p in args.policies if not (Path(p) / "pointvlm.json").is_file()]
    if missing:
        sys.exit(f"cloud_reading: {missing[0]} is not a policy directory (no pointvlm.json there)")
    from policies import PointVLM

    cfg = load_config(args.config, overrides)
    samples, quant = held_out_samples(cfg), run_quant(cfg)
    print(f"{len(samples)} held-out objects; NLL of each field's target tokens, nats per token")
    results = {}
    for path in args.policies:
        policy = PointVLM.from_pretrained(path).eval()
        results[path] = summary(cloud_reading(policy, samples, quant, cfg.data.use_images, cfg.eval.batch_size))
        print(f"\n{path}\n  {'field':<12}{'own cloud':>10}{'swapped':>10}   gap [95% CI]")
        for name, row in results[path].items():
            low, high = row["ci"]
            print(
                f"  {name:<12}{row['own']:>10.3f}{row['swapped']:>10.3f}   {row['gap']:+.3f} [{low:+.3f}, {high:+.3f}]"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=float))
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
