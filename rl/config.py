"""The one typed configuration tree of the RL runs: a dataclass per section, a `setting` line per key.

Every field is one `setting(default, doc, check, choices)` line (`rl.config_fields`), so adding a key is a one-line
change; the YAML loading, the type and range checks and `--help` (`rl/config_loading.py`) are all generated from those
lines. The sections live in `rl.config_sections` (where and how a run runs) and `rl.config_objectives` (the
algorithms'); this module assembles them into `Config`, derives what several parts of a run read from it, and is where
every other module imports the configuration from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data3d.settings import DataSettings
from rewards.schema import Quant
from rl.algorithms import ALGORITHMS
from rl.config_fields import (
    ALIGN_CATEGORIES,
    ALIGN_COLOURS,
    ALIGN_DIMS,
    CHECKS,
    CONFIG_DIR,
    CORRECTIONS,
    DATA_DEFAULTS,
    FUSIONS,
    LLM_DTYPES,
    LLM_MODES,
    MOVED_KEYS,
    ROUTABLE_FIELDS,
    SYNC_TRANSPORTS,
    ConfigError,
)
from rl.config_objectives import AlgoConfig, DpoConfig, EngineConfig, ReconConfig, SftConfig, SpaConfig
from rl.config_sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LearnerConfig,
    PlacementConfig,
    PolicyConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    SyncConfig,
    TraceConfig,
    VllmConfig,
)

__all__ = [  # the names the rest of pointrl imports from here, wherever they are defined
    "ALGORITHMS", "ALIGN_CATEGORIES", "ALIGN_COLOURS", "ALIGN_DIMS", "CHECKS", "CONFIG_DIR", "CORRECTIONS",
    "DATA_DEFAULTS", "FUSIONS", "LLM_DTYPES", "LLM_MODES", "MOVED_KEYS", "ROUTABLE_FIELDS", "SYNC_TRANSPORTS",
    "AlgoConfig", "CheckpointConfig", "Config", "ConfigError", "DataConfig", "DpoConfig", "EngineConfig",
    "EvalConfig", "LearnerConfig", "PlacementConfig", "PolicyConfig", "ReconConfig", "RewardConfig",
    "RolloutConfig", "RunConfig", "SftConfig", "SpaConfig", "SyncConfig", "TraceConfig", "VllmConfig",
    "correction_mode", "data_settings", "policy_overrides", "recompute_reasons", "recomputes_old_logprobs",
    "run_quant", "scalar_reward_weights",
]  # fmt: skip


@dataclass
class Config:
    """The whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    spa: SpaConfig = field(default_factory=SpaConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)


def policy_overrides(cfg: Config) -> dict:
    """What the run changes in a loaded policy's config; learner and rollout workers apply the same, so that the
    trainable tensors the learner publishes are exactly the ones the workers hold."""
    overrides = {
        "llm_mode": cfg.policy.llm_mode,
        "lora_r": cfg.policy.lora_r,
        "llm_dtype": cfg.policy.dtype,
        "train_point_encoder": cfg.policy.train_point_encoder,
    }
    if cfg.policy.fusion is not None:
        overrides["fusion"] = cfg.policy.fusion  # learned -> camera adds the bias scales fresh (policies/fusion.py)
    from rl.algorithms import algorithm  # torch: only a process that builds a policy asks

    return {**overrides, **algorithm(cfg.algo.name).heads(cfg)}  # the training heads the algorithm's losses read


def scalar_reward_weights(cfg: Config) -> dict[str, float]:
    """The weight of each reward in the one scalar of broadcast GRPO and DPO: reward.field_weights, and λ for rpc."""
    return {**cfg.reward.field_weights, "rpc": cfg.algo.rpc_weight}


def data_settings(cfg: Config) -> DataSettings:
    """The data settings of a run, which its policies record (`data_settings.json`) for `pointrl eval`."""
    d = cfg.data
    return DataSettings(num_points=d.num_points, image_size=d.image_size, num_kpts=d.num_kpts, bins=cfg.reward.bins)


def run_quant(cfg: Config) -> Quant:
    """The coordinate quantization of a run: prompts, targets, rewards and evaluation all use this one."""
    return Quant(bins=cfg.reward.bins)


def recompute_reasons(cfg: Config) -> list[str]:
    """Why the rollout's log-probs cannot be the ratio's denominator in this run (empty: they can): the rollout's
    arithmetic may differ from the learner's, or the rollout policy is older than the learner's (policies/roles.py
    states the precision contract)."""
    reasons = []
    if cfg.policy.dtype != "float32":
        reasons.append(
            f"policy.dtype={cfg.policy.dtype} (a KV-cached decode and the learner's full pass round differently)"
        )
    vllm_dtype = cfg.rollout.vllm.dtype
    if cfg.rollout.backend == "vllm" and vllm_dtype not in ("auto", cfg.policy.dtype):
        reasons.append(f"rollout.vllm.dtype={vllm_dtype} differs from policy.dtype={cfg.policy.dtype}")
    if cfg.rollout.mode == "one_step_off":
        reasons.append("rollout.mode=one_step_off (decoupled PPO clips around the learner's own log-probs)")
    elif correction_mode(cfg) != "none":
        reasons.append(
            f"rollout.correction={correction_mode(cfg)} (it compares the learner's log-probs with the rollout's)"
        )
    return reasons


def correction_mode(cfg: Config) -> str:
    """The rollout correction of this run: rollout.correction, or when it is null, tis under one_step_off (decoupled
    PPO's truncated importance weight) and none otherwise."""
    chosen = cfg.rollout.correction
    if chosen is not None:
        return chosen
    return "tis" if cfg.rollout.mode == "one_step_off" else "none"


def recomputes_old_logprobs(cfg: Config) -> bool:
    """Whether the learner scores the old policy itself: learner.recompute_old_logprobs, or when it is null, whether
    `recompute_reasons` has any."""
    chosen = cfg.learner.recompute_old_logprobs
    return bool(recompute_reasons(cfg)) if chosen is None else chosen
