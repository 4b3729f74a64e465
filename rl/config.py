"""The one typed configuration tree of the RL runs: a dataclass per section, a `setting` line per key.

Every field is one `setting(default, doc, check, choices)` line, so adding a key is a one-line change; the YAML
loading, the type and range checks and `--help` (`rl/config_loading.py`) are all generated from those lines.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data3d.settings import DataSettings
from data3d.shapes import CATEGORIES, COLOUR_NAMES
from rewards.schema import FIELDS, GEOMETRY_FIELDS, REWARDS, Quant
from rl.algorithms import ALGORITHMS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LLM_MODES = ("full", "lora", "frozen")  # the same as policies.inputs (a test checks it), kept here to stay torch-free
LLM_DTYPES = ("float32", "bfloat16", "float16")  # likewise policies.inputs.LLM_DTYPES
FUSIONS = ("learned", "camera")  # likewise policies.inputs.FUSIONS
ALIGN_CATEGORIES = tuple(sorted(CATEGORIES))  # the cloud-alignment head's outputs: the box (6), these, then colours
ALIGN_COLOURS = COLOUR_NAMES
ALIGN_DIMS = 6 + len(ALIGN_CATEGORIES) + len(ALIGN_COLOURS)
LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "token_sum_norm")  # rl.algorithms.losses.aggregate_loss
# rl.algorithms.correction.CORRECTIONS, kept here to stay torch-free
CORRECTIONS = ("none", "tis", "icepop", "seq_mask")
SYNC_TRANSPORTS = ("ray", "nccl", "ipc")  # rollout.weight_sync.TRANSPORTS, kept here to stay torch-free
ROUTABLE_FIELDS = tuple(name for name in FIELDS if name in REWARDS)  # output fields with both a span and a reward
MOVED_KEYS = {"reward.field_weights.rpc": "algo.rpc_weight"}  # a value with one home: the key to set instead
DATA_DEFAULTS = DataSettings()  # `pointrl synth`'s defaults, so that a trained policy reads what synth writes
CHECKS = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 2": lambda v: v >= 2,
    "0 or >= 2": lambda v: v == 0 or v >= 2,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in (0, 1)": lambda v: 0 < v < 1,
    "ray (nccl and ipc need GPUs and vLLM's weight-transfer API: not built yet)": lambda v: v == "ray",
    "empty or key=value": lambda v: v == "" or (v.count("=") == 1 and all(v.split("="))),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key path and the file or override it came from."""


def setting(default: Any, doc: str, check: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, the one-line doc `--help` prints, an optional range check (a key of CHECKS,
    applied to each element of a list or dict) and the allowed strings of an enum."""
    metadata = {"doc": doc, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """what this run is and where it writes"""

    name: str = setting("grca", "run name (labels the metrics, the Ray job and TensorBoard)")
    dir: str = setting("runs/grca", "run directory: metrics.jsonl, TensorBoard events, checkpoints, evaluations")
    seed: int = setting(0, "seed of the prompt order, sampling and initialization", ">= 0")
    steps: int = setting(20, "RL steps (prompts -> rollouts -> rewards -> update -> weight sync)", "> 0")
    ray_address: str | None = setting(None, "Ray cluster to join; null: $RAY_ADDRESS when set, else start a local Ray")
    num_cpus: float | None = setting(None, "CPUs of a locally started Ray; null: all of the machine's", "> 0")
    log_every: int = setting(1, "print a progress line every k steps", "> 0")


@dataclass
class PolicyConfig:
    """the Point-VLM that trains"""

    init: str | None = setting(None, "policy directory to start from; null: build the tiny local policy")
    llm_mode: str = setting("full", "which LLM weights train", choices=LLM_MODES)
    lora_r: int = setting(16, "LoRA rank when llm_mode is lora", "> 0")
    dtype: str = setting("float32", "LLM weight dtype (the encoders always run in float32)", choices=LLM_DTYPES)
    train_point_encoder: bool = setting(False, "train the point encoder too (on for a from-scratch tiny encoder)")
    fusion: str | None = setting(
        None,
        "point-image cross-attention: learned (position encodings only) or camera (plus a bias by the image distance "
        "to each group's projection, policies/fusion.py); null: the policy's own (learned for the tiny policy)",
        choices=FUSIONS,
    )
    hidden_size: int = setting(64, "LLM width of the tiny policy built when init is null", "> 0")
    num_layers: int = setting(2, "LLM layers of the tiny policy built when init is null", "> 0")


@dataclass
class DataConfig:
    """the prompts and their targets"""

    dir: str | None = setting(None, "a `pointrl synth` dataset directory; null: generate samples on the fly")
    train_size: int = setting(256, "training samples generated on the fly", "> 0")
    eval_size: int = setting(32, "held-out samples generated on the fly", "> 0")
    seed: int = setting(0, "seed of the generated samples", ">= 0")
    num_points: int = setting(DATA_DEFAULTS.num_points, "points per cloud of generated samples", "> 0")
    image_size: int = setting(DATA_DEFAULTS.image_size, "side of the rendered image of generated samples", "> 0")
    use_images: bool = setting(True, "give the policy the rendered image as well as the points")
    num_kpts: int = setting(
        DATA_DEFAULTS.num_kpts, "keypoints per target (kpts2d and kpts3d) of generated samples", "> 0"
    )
    relevance: float = setting(
        0.0,
        "share of generated samples asked whether a description fits the cloud (3D relevance discrimination)",
        "in [0, 1]",
    )


@dataclass
class VllmConfig:
    """options of the vLLM engine (rollout.backend vllm), passed to vllm.LLM by rollout/vllm_engine.py"""

    dtype: str = setting(
        "auto",
        "weight dtype vLLM serves; auto: policy.dtype, so that rollout and learner log-probs agree",
        choices=("auto", *LLM_DTYPES),
    )
    gpu_memory_utilization: float = setting(
        0.9, "share of the GPU memory one engine may take (vLLM's CPU build: of the host memory)", "in (0, 1]"
    )
    kv_cache_gib: float | None = setting(
        None, "KV-cache size in GiB; null: what gpu_memory_utilization leaves (set it on a small CPU machine)", "> 0"
    )
    tensor_parallel_size: int = setting(1, "GPUs each engine shards the LLM over", "> 0")
    max_model_len: int | None = setting(None, "longest prompt + response in tokens; null: the model's", "> 0")
    enable_sleep_mode: bool = setting(
        False, "let the engine free its GPU memory while a colocated learner trains (GPU builds only)"
    )
    enforce_eager: bool = setting(False, "no torch.compile or CUDA graphs: the engine starts faster and decodes slower")


@dataclass
class RolloutConfig:
    """the Ray actors that sample G outputs per prompt"""

    backend: str = setting("hf", "generation engine", choices=("hf", "vllm"))
    num_workers: int = setting(2, "rollout worker actors", "> 0")
    cpus_per_worker: float = setting(
        0.5,
        "CPUs reserved per rollout worker (fractions share a core); the worker runs torch on max(1, floor(this)) "
        "threads",
        ">= 0",
    )
    gpus_per_worker: float = setting(
        0.0,
        "GPUs reserved per rollout worker (fractions share a GPU; with "
        "placement.mode=colocated, its share of the GPU it shares with one learner "
        "worker, in (0.5, 1))",
        ">= 0",
    )
    group_size: int = setting(4, "G: sampled outputs per prompt", ">= 2")
    prompts_per_step: int = setting(4, "prompts per step (a step scores prompts_per_step * G outputs)", "> 0")
    temperature: float = setting(1.0, "sampling temperature", "> 0")
    top_p: float = setting(1.0, "nucleus sampling probability mass", "in (0, 1]")
    max_new_tokens: int = setting(320, "generated tokens per output at most", "> 0")
    min_new_tokens: int = setting(
        0,
        "the fewest tokens each sample generates before EOS may end it; benchmarks set it to max_new_tokens to "
        "force equal lengths (at most max_new_tokens)",
        ">= 0",
    )
    max_staleness: int = setting(0, "policy versions a rollout may lag the learner (0: strictly on-policy)", ">= 0")
    mode: str = setting(
        "sync",
        "sync: each step's rollouts use the weights of the step before; one_step_off: step k+1's rollouts run "
        "while the learner trains on step k (lag 1, needs max_staleness >= 1; decoupled PPO: the ratio is clipped "
        "around the learner's recomputed log-probs, each token corrected by rollout.correction, tis by default)",
        choices=("sync", "one_step_off"),
    )
    correction: str | None = setting(
        None,
        "rollout/learner mismatch correction of the clipped surrogate (rl/algorithms/correction.py), over the learner's "
        "recomputed log-probs: tis weighs each token by min(pi_learner / pi_rollout, algo.max_is_weight), icepop "
        "masks each token whose ratio is outside correction_bounds, seq_mask each response whose geometric-mean "
        "ratio is; null: tis under mode=one_step_off, else none",
        choices=CORRECTIONS,
    )
    correction_bounds: list[float] = setting(
        [0.5, 2.0], "[low, high] of the ratio that icepop (per token) and seq_mask (per response) keep", "> 0"
    )
    dynamic_sampling: bool = setting(
        False,
        "DAPO's dynamic sampling: drop the groups whose token advantages are all 0 (every sample scored alike) and "
        "draw more prompts, up to rollout.max_refills times, until prompts_per_step groups teach something",
    )
    max_refills: int = setting(
        4, "rollout.dynamic_sampling: extra draws of prompts_per_step prompts a step may make to fill its batch", ">= 0"
    )
    max_restarts: int = setting(
        3,
        "times a rollout worker whose process died is restarted (it gets the current weights again and the "
        "step's rollout is retried); 0: a dead worker ends the run",
        ">= 0",
    )
    answer_wait_s: float = setting(
        60.0,
        "after a rollout worker died, how long the step waits for the workers to answer: it goes on with those "
        "that did (a worker whose node is gone rejoins once Ray places it again), and stops if none did",
        "> 0",
    )
    vllm: VllmConfig = field(
        default_factory=VllmConfig, metadata={"doc": "vLLM engine options", "check": None, "choices": None}
    )


@dataclass
class RewardConfig:
    """how rollouts are scored"""

    mode: str = setting("serve", "a Ray Serve handle, in process, or HTTP to url", choices=("serve", "local", "http"))
    url: str | None = setting(None, "the reward service's base URL (needed when mode is http)")
    timeout_s: float = setting(30.0, "seconds a reward call may take before its samples count as missing", "> 0")
    replicas: int = setting(1, "replicas of the Ray Serve reward deployment", "> 0")
    cpus_per_replica: float = setting(0.25, "CPUs reserved per reward replica", ">= 0")
    bins: int = setting(
        DATA_DEFAULTS.bins, "coordinate bins of the output schema (0: continuous coordinates)", "0 or >= 2"
    )
    field_weights: dict[str, float] = setting(
        dict.fromkeys((r for r in REWARDS if r != "rpc"), 1.0),
        "weight of each reward in the one scalar of broadcast GRPO and DPO (rpc's is algo.rpc_weight)",
        ">= 0",
    )


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
class LearnerConfig:
    """the Ray Train learner and its optimizer"""

    num_workers: int = setting(1, "Ray Train workers (gloo on CPU, NCCL on GPUs)", "> 0")
    cpus_per_worker: float = setting(1.0, "CPUs reserved per learner worker", ">= 0")
    use_gpu: bool = setting(
        False,
        "one GPU per learner worker (colocated: the part of it the rollout worker leaves); "
        "a cluster without enough GPUs is refused at start",
    )
    strategy: str = setting(
        "ddp",
        "ddp: a full replica per worker; fsdp2: parameters, gradients and optimizer state "
        "sharded (fully_shard per LLM decoder layer, then the policy)",
        choices=("ddp", "fsdp2"),
    )
    activation_checkpointing: bool = setting(
        False,
        "recompute each LLM decoder layer in backward instead of keeping "
        "its activations (less memory, about a third more compute)",
    )
    logprob_chunk: int = setting(
        0,
        "response tokens per chunk of the log-softmax over the vocabulary, each chunk "
        "recomputed in backward (0: all at once, a float32 rows x tokens x vocabulary "
        "tensor)",
        ">= 0",
    )
    lr: float = setting(1e-5, "peak AdamW learning rate", "> 0")
    weight_decay: float = setting(0.0, "AdamW weight decay", ">= 0")
    betas: list[float] = setting([0.9, 0.999], "AdamW (beta1, beta2)", "in [0, 1)")
    warmup_steps: int = setting(0, "RL steps of linear LR warm-up (the LR moves once per RL step)", ">= 0")
    schedule: str = setting(
        "constant", "LR schedule over the RL steps after the warm-up", choices=("constant", "cosine", "linear")
    )
    grad_clip: float = setting(1.0, "largest global gradient norm", "> 0")
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step", "> 0")
    micro_batch_size: int = setting(8, "samples per forward/backward on each learner worker", "> 0")
    epochs: int = setting(1, "optimization epochs over one rollout batch", "> 0")
    recompute_old_logprobs: bool | None = setting(
        None,
        "GRCA/GRPO: the learner recomputes the old policy's log-probs (one more forward pass) as the ratio's "
        "denominator instead of taking the rollout's, and logs how far they differ (mismatch/*); "
        "null: whenever the rollout's arithmetic may differ from the learner's (policy.dtype below float32, a "
        "rollout.vllm.dtype other than policy.dtype, rollout.mode=one_step_off) or a rollout.correction needs them, "
        "where false is refused",
    )
    max_failures: int = setting(
        3,
        "times the learner workers are restarted after one dies (Ray Train's FailureConfig): they resume from the "
        "newest checkpoint and redo the steps after it; 0: a learner failure ends the run",
        ">= 0",
    )


@dataclass
class PlacementConfig:
    """where learner and rollout workers run (rl/runtime/placement.py plans it from the Ray cluster's resources)"""

    mode: str = setting(
        "disaggregated",
        "disaggregated: learner and rollout workers on separate GPUs; colocated: "
        "each GPU holds one learner and one rollout worker (vLLM sleeps while the "
        "learner trains)",
        choices=("colocated", "disaggregated"),
    )
    rollout_strategy: str = setting(
        "PACK",
        "Ray placement-group strategy of the rollout workers",
        choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    )
    learner_strategy: str = setting(
        "PACK",
        "Ray placement-group strategy of the learner workers (disaggregated; "
        "colocated puts each on its rollout worker's node)",
        choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    )
    rollout_label: str = setting(
        "",
        "key=value: the rollout workers run only on nodes with this Ray label (ray start --labels); empty: any node",
        "empty or key=value",
    )
    learner_label: str = setting(
        "",
        "key=value: the learner workers run only on nodes with this Ray label (disaggregated); empty: any node",
        "empty or key=value",
    )
    reward_label: str = setting(
        "",
        "key=value: the reward replicas (reward.mode=serve) run only on nodes with this Ray label; empty: any node",
        "empty or key=value",
    )
    wait_s: float = setting(
        0.0,
        "seconds to wait for the cluster to show what the plan needs (an autoscaling "
        "cluster adds nodes); 0: refuse at once",
        ">= 0",
    )


@dataclass
class SyncConfig:
    """how the learner's weights reach the rollout workers after each step (rollout/weight_sync.py)"""

    transport: str = setting(
        "ray",
        "ray: the learner puts the tensors into the object store, each worker fetches them",
        "ray (nccl and ipc need GPUs and vLLM's weight-transfer API: not built yet)",
        SYNC_TRANSPORTS,
    )
    # rank 0 then holds about one bucket on the host, not the model; 0 keeps a version one object (tiny models:
    # vLLM's msgpack caps one reload at 4 GiB)
    bucket_mb: float = setting(
        512.0, "weights travel in buckets of at most this many MiB (a larger tensor alone); 0: one object", ">= 0"
    )


@dataclass
class CheckpointConfig:
    """checkpoints through Ray Train"""

    every: int = setting(10, "save a checkpoint every k steps", "> 0")
    keep: int = setting(2, "newest checkpoints kept", "> 0")
    resume: bool = setting(True, "continue from the newest checkpoint in run.dir when there is one")


@dataclass
class EvalConfig:
    """held-out evaluation"""

    every: int = setting(0, "evaluate every k steps (0: only at the end)", ">= 0")
    greedy: bool = setting(True, "decode greedily (else with the rollout sampling settings)")
    max_new_tokens: int = setting(320, "generated tokens per output at most", "> 0")
    batch_size: int = setting(32, "prompts generated together by the final evaluations", "> 0")
    split: str = setting("test", "dataset split evaluated when data.dir is set")
    pictures: int = setting(2, "objects each periodic evaluation draws to TensorBoard (needs matplotlib)", ">= 0")
    reliance: bool = setting(
        True,
        "also evaluate with the cloud 3D-masked and swapped, with the image and blanked (the encoder-reliance gap)",
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


@dataclass
class TraceConfig:
    """what each step records of its rollouts for `pointrl traces` and `pointrl replay` (run.dir/traces/)"""

    samples_per_step: int = setting(
        8,
        "responses traced per step, rounded up to whole groups (0: off); every evaluation answer is traced too",
        ">= 0",
    )


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
