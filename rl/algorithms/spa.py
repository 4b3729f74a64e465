"""SPA: the same target scored with the clean cloud and with a corrupted one (3D group masking by default), the
clean one preferred, plus an NLL anchor on the clean input.

"SPA: Mask-based Streamlining Preference Alignment for 3D MLLMs", eqs. 3-6: -log sigma(beta (log P(y|x) -
log P(y|x'))), x' the corrupted cloud (`spa.corruption`: Table 2 finds group masking best). No sampling: the
targets are the dataset's, so a policy that ignores its cloud gains nothing here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from data3d import Sample
from policies.point_ops import drop_points, gaussian_noise, mask_groups
from rl.algorithms.batch import BatchSource, LearnBatch, target_batch
from rl.algorithms.losses import spa_loss
from rl.algorithms.update import Learner, loss_means, micro_batches, on_device
from rl.config import Config, run_quant
from rollout.batching import policy_inputs


class SPA:
    name = "spa"
    warm_up = True
    clips_ratio = False
    recipe: dict = {}

    def rollouts(self, cfg: Config) -> bool:
        return False

    def needs_reference(self, cfg: Config) -> bool:
        return False

    def heads(self, cfg: Config) -> dict:
        return {}

    def batch(self, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
        samples, s = source.prompts(step), cfg.spa
        corrupted = corrupt(
            samples,
            s.corruption,
            cfg.run.seed + step,
            mask_ratio=s.mask_ratio,
            noise_std=s.noise_std,
            drop_ratio=s.drop_ratio,
        )  # x'
        return target_batch(step, source.version, samples, source.quant, corrupted), {}

    # SPA eqs. 3-6: the clean and the corrupted rows of a micro-batch in one forward (DDP: one forward per backward)
    def update(self, learner: Learner, batch: LearnBatch, cfg: Config) -> dict[str, float]:
        policy = learner.policy
        ids, mask = on_device(policy.device, *policy.tokenize_responses(batch.response_texts))
        inputs = policy_inputs(policy, batch.samples + batch.corrupted, run_quant(cfg), cfg.data.use_images)
        n, losses = len(batch.samples), []
        for _ in range(cfg.learner.epochs):
            chunks = micro_batches(n, cfg.learner.micro_batch_size)
            learner.accumulator.epoch(len(chunks))
            for rows in chunks:
                clouds, targets = rows + [n + r for r in rows], rows + rows  # [x; x'], each with its target y
                logp, _ = learner.scorer(inputs.select(clouds), ids[targets], mask[targets])
                clean, masked = logp[: len(rows)], logp[len(rows) :]
                loss, info = spa_loss(clean, masked, mask[rows], cfg.spa.beta, cfg.spa.nll_weight)
                learner.accumulator.backward(loss)
                losses.append({**info, "total": float(loss.detach())})
        return loss_means(losses)

    def learning_rows(self, batch: LearnBatch) -> int:
        return len(batch.samples)


ALGORITHM = SPA


def corrupt(
    samples: list[Sample],
    kind: str,
    seed: int,
    *,
    mask_ratio: float = 0.5,
    noise_std: float = 0.01,
    drop_ratio: float = 0.5,
    num_groups: int = 32,
) -> list[Sample]:
    """Each sample with its cloud corrupted the SPA way: 3D group masking (`mask_ratio` of the points removed in
    whole groups), Gaussian noise or random point drop."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for sample in samples:
        points = torch.from_numpy(np.asarray(sample.points, dtype=np.float32))[None]
        if kind == "mask":
            corrupted = mask_groups(points, mask_ratio, min(num_groups, points.shape[1]), generator)
        elif kind == "gaussian":
            corrupted = gaussian_noise(points, noise_std, generator)
        elif kind == "drop":
            corrupted = drop_points(points, drop_ratio, generator)
        else:
            raise ValueError(f"spa.corruption: expected one of mask, gaussian, drop, got {kind!r}")
        out.append(dataclasses.replace(sample, points=corrupted[0].numpy()))
    return out
