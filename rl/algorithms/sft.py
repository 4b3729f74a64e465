"""SFT: teacher forcing on the dataset's serialized targets (GRCA eq. 5, the NLL of each target token), plus the
cloud-alignment loss (`sft.align_weight`: a head that must read the box, category and colour from the cloud alone)
and ROSS3D's patch reconstruction (`recon.sft_weight`). It is the algorithm of GRCA's Stage 1, the warm-up every RL
run starts from, and `pointrl engine`'s retraining.
"""

from __future__ import annotations

import numpy as np
import torch

from data3d import Sample
from rl.algorithms.batch import BatchSource, LearnBatch, target_batch
from rl.algorithms.losses import cloud_alignment_loss, nll_loss
from rl.algorithms.update import (
    Learner,
    loss_means,
    micro_batches,
    on_device,
    reconstruction_request,
    with_reconstruction,
)
from rl.config import ALIGN_CATEGORIES, ALIGN_COLOURS, ALIGN_DIMS, Config, run_quant
from rollout.batching import policy_inputs


class SFT:
    name = "sft"
    warm_up = False  # it is the warm-up
    clips_ratio = False
    recipe: dict = {}

    def rollouts(self, cfg: Config) -> bool:
        return False

    def needs_reference(self, cfg: Config) -> bool:
        return False

    def heads(self, cfg: Config) -> dict:
        heads = {"align_dims": ALIGN_DIMS} if cfg.sft.align_weight > 0 else {}  # a policy without one gets it fresh
        return {**heads, **({"recon_head": True} if cfg.recon.sft_weight > 0 else {})}

    def batch(self, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
        return target_batch(step, source.version, source.prompts(step), source.quant), {}

    # GRCA eq. 5: -1/|y| sum_t log p(y_t | y_<t, x), plus the weighted auxiliary losses
    def update(self, learner: Learner, batch: LearnBatch, cfg: Config) -> dict[str, float]:
        policy = learner.policy
        ids, mask = on_device(policy.device, *policy.tokenize_responses(batch.response_texts))
        inputs = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images)
        align = cfg.sft.align_weight > 0
        align_targets = on_device(policy.device, *alignment_targets(batch.samples)) if align else None
        losses = []
        for _ in range(cfg.learner.epochs):
            chunks = micro_batches(len(batch.samples), cfg.learner.micro_batch_size)
            learner.accumulator.epoch(len(chunks))
            for rows in chunks:
                recon = reconstruction_request(policy, inputs.select(rows), cfg.recon.sft_weight, cfg)
                logp, extras = learner.scorer(inputs.select(rows), ids[rows], mask[rows], align=align, recon=recon)
                loss, info = nll_loss(logp, mask[rows])
                if align:
                    box, category, colour = (t[rows] for t in align_targets)
                    aligned, align_info = cloud_alignment_loss(
                        extras["align"], box, category, colour, len(ALIGN_CATEGORIES)
                    )
                    loss, info = loss + cfg.sft.align_weight * aligned, {**info, **align_info}
                loss, info = with_reconstruction(loss, info, extras, cfg.recon.sft_weight)
                learner.accumulator.backward(loss)
                losses.append({**info, "total": float(loss.detach())})
        return loss_means(losses)

    def learning_rows(self, batch: LearnBatch) -> int:
        return len(batch.samples)


ALGORITHM = SFT


def alignment_targets(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each cloud decides, for `rl.algorithms.losses.cloud_alignment_loss`: box (B, 6), category (B,), colour (B,).
    A sample of an unknown category or colour (a real-data loader's) is refused: the head cannot learn it."""
    for s in samples:
        if s.targets.category not in ALIGN_CATEGORIES or s.targets.attributes.get("colour") not in ALIGN_COLOURS:
            raise ValueError(
                f"sample {s.uid!r}: cloud alignment needs a category of {ALIGN_CATEGORIES} and a colour "
                f"of {ALIGN_COLOURS}; set sft.align_weight=0 for this data"
            )
    box = torch.tensor(np.stack([s.targets.bbox3d for s in samples]), dtype=torch.float32)
    category = torch.tensor([ALIGN_CATEGORIES.index(s.targets.category) for s in samples])
    colour = torch.tensor([ALIGN_COLOURS.index(s.targets.attributes["colour"]) for s in samples])
    return box, category, colour
