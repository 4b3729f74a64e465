"""The sections of the configuration tree (`rl.config.Config`) that say where and how a run runs: the run, the
policy, the data, the rollout, the rewards, the learner, placement, weight sync, checkpoints, evaluation and traces.
The algorithms' own sections are in `rl.config_objectives`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rewards.schema import REWARDS
from rl.config_fields import CORRECTIONS, DATA_DEFAULTS, FUSIONS, LLM_DTYPES, LLM_MODES, SYNC_TRANSPORTS, setting


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
class TraceConfig:
    """what each step records of its rollouts for `pointrl traces` and `pointrl replay` (run.dir/traces/)"""

    samples_per_step: int = setting(
        8,
        "responses traced per step, rounded up to whole groups (0: off); every evaluation answer is traced too",
        ">= 0",
    )
