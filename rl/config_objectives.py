"""The sections of the configuration tree (`rl.config.Config`) that belong to the objectives: the algorithm and its
advantage and loss constants (eqs. 9-16 of GRCA), SPA, DPO, SFT, the reconstruction loss and the PiSA data engine."""

from __future__ import annotations

from dataclasses import dataclass

from rewards.schema import GEOMETRY_FIELDS
from rl.algorithms import ALGORITHMS
from rl.config_fields import LOSS_AGGREGATIONS, ROUTABLE_FIELDS, setting


@dataclass
class AlgoConfig:
    """the algorithm and its advantage and loss constants"""

    name: str = setting(
        "grca",
        "routed GRPO, broadcast GRPO, GDPO (each reward standardized, then summed and broadcast), DAPO, SPA, DPO or "
        "SFT",
        choices=ALGORITHMS,
    )
    rpc_weight: float = setting(
        0.15,
        "lambda: weight of RPC in the background advantage (eq. 14) and in the scalar reward of broadcast GRPO and DPO",
        ">= 0",
    )
    routed_fields: list[str] = setting(
        list(GEOMETRY_FIELDS),
        "fields whose tokens get their own advantage (eq. 10); the others join the background",
        choices=ROUTABLE_FIELDS,
    )
    routed_field_weights: dict[str, float] = setting(
        dict.fromkeys(ROUTABLE_FIELDS, 1.0), "scale of each routed field's advantage on its tokens", ">= 0"
    )
    advantage_norm: str = setting(
        "std",
        "std: a group's rewards minus their mean, over their std (eq. 9); none: minus the mean only (Dr. GRPO)",
        choices=("std", "none"),
    )
    clip_eps: float = setting(0.2, "epsilon of the clipped probability ratio (eqs. 15-16)", "> 0")
    clip_eps_high: float | None = setting(None, "upper clip epsilon (DAPO's clip-higher: 0.28); null: clip_eps", "> 0")
    loss: str = setting(
        "clip",
        "clip: PPO's clipped surrogate (eqs. 15-16); cispo: the importance weight clipped to [1 - clip_eps, 1 + "
        "clip_eps_high] and detached, times the advantage and the log-prob, so that every token keeps its gradient",
        choices=("clip", "cispo"),
    )
    ratio: str = setting(
        "token",
        "token: each token's own ratio; sequence (GSPO): the geometric mean of the ratios over a span, clipped as "
        "one: over the whole response for broadcast advantages, over each routed field's span and over the "
        "background for GRCA",
        choices=("token", "sequence"),
    )
    loss_agg: str = setting(
        "seq_mean_token_mean",
        "how token terms become the loss: seq_mean_token_mean (eq. 16: per response, then over responses); "
        "token_mean (DAPO: over every token of the optimizer step's micro-batches); token_sum_norm (Dr. GRPO: "
        "each response's sum over rollout.max_new_tokens, then over responses)",
        choices=LOSS_AGGREGATIONS,
    )
    overlong_buffer: int = setting(
        64,
        "dapo: the last tokens before rollout.max_new_tokens where a response's reward loses up to 1 in proportion "
        "to how far it reaches into them (DAPO's soft overlong punishment; 0: off)",
        ">= 0",
    )
    kl_beta: float = setting(0.0, "beta of the k3 KL to a frozen reference (0: no reference model)", ">= 0")
    max_is_weight: float = setting(
        2.0,
        "rollout.correction=tis (one_step_off's default): the cap C of each token's importance weight "
        "min(pi_learner / pi_rollout, C), a constant multiplier of its clipped term (truncated importance sampling: "
        "a token at the cap keeps its gradient)",
        "> 0",
    )


@dataclass
class SpaConfig:
    """SPA: clean vs 3D-corrupted input, same response"""

    beta: float = setting(
        1.0, "beta scaling log P(y|x) - log P(y|x') (SPA eq. 5 and Table A1 have none, i.e. 1)", "> 0"
    )
    nll_weight: float = setting(
        1.0, "weight of the NLL anchor on the clean input, one token-mean SFT loss (the paper gives no number)", ">= 0"
    )
    corruption: str = setting("mask", "how x' is made (Table 2: mask is best)", choices=("mask", "gaussian", "drop"))
    mask_ratio: float = setting(
        0.5, "share of the points removed, in whole groups around FPS centres (the paper: best in 25-50%)", "in [0, 1)"
    )
    noise_std: float = setting(0.01, "std of the Gaussian noise added to xyz", ">= 0")
    drop_ratio: float = setting(0.5, "share of points dropped", "in [0, 1]")


@dataclass
class DpoConfig:
    """DPO against a frozen reference"""

    beta: float = setting(0.1, "beta of the DPO loss (SPA paper, appendix A.2)", "> 0")
    pairs_file: str | None = setting(
        None, 'JSONL of {"uid", "chosen", "rejected"}; null: each group\'s highest vs lowest total reward'
    )


@dataclass
class SftConfig:
    """supervised fine-tuning (train_sft, and train_grca's warm-up when policy.init is null)"""

    steps: int = setting(60, "SFT optimizer steps", "> 0")
    lr: float = setting(3e-4, "SFT learning rate", "> 0")
    batch_size: int = setting(8, "samples per SFT step", "> 0")
    warmup_steps: int = setting(50, "steps of linear LR warm-up of the SFT warm-up stage", ">= 0")
    schedule: str = setting("cosine", "LR schedule of the SFT warm-up stage", choices=("constant", "cosine", "linear"))
    align_weight: float = setting(
        1.0,
        "weight of the cloud-alignment loss (box, category and colour read from the "
        "mean point token) beside the SFT loss; 0: off",
        ">= 0",
    )


@dataclass
class ReconConfig:
    """masked point-patch reconstruction from the LLM's point tokens (ROSS3D's reconstructive loss; training-only)"""

    sft_weight: float = setting(
        0.0, "weight of the reconstruction loss beside SFT's (and the warm-up's); 0: off", ">= 0"
    )
    rl_weight: float = setting(
        0.0, "weight of the reconstruction loss beside the RL loss of GRCA and GRPO; 0: off", ">= 0"
    )
    mask_ratio: float = setting(
        0.25, "fraction of each cloud's point patches masked (ROSS3D: a small ratio such as 25%)", "in (0, 1)"
    )


@dataclass
class EngineConfig:
    """the PiSA data engine (`pointrl engine`): annotate unlabeled clouds, cross-check, retrain, in loops"""

    loops: int = setting(3, "annotate -> cross-check -> retrain loops", "> 0")
    num_clouds: int = setting(256, "unlabeled clouds annotated per loop (the first of the source split)", "> 0")
    samples: int = setting(4, "annotations sampled per cloud (G), at rollout.temperature", "> 0")
    steps: int = setting(60, "SFT steps of each retraining (sft.batch_size samples each)", "> 0")
    lr: float = setting(
        2e-4, "learning rate of each retraining (cosine, after a warm-up of a tenth of the steps)", "> 0"
    )
    rl_steps: int = setting(
        0, "steps of the run's algorithm (algo.name) after each retraining's SFT; 0: SFT only", ">= 0"
    )
    ablation: bool = setting(True, "also run the same loops without the cross-check (Stage 2), for the report")
