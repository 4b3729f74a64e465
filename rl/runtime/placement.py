"""Placement: the Ray resources of the learner and rollout workers, planned from the cluster before anything starts.

`plan_placement(cfg, nodes, rollouts)` is pure: from each node's resources (`ray.nodes()[i]["Resources"]`; one dict
such as `ray.cluster_resources()` reads as a single node) and the config it returns the bundles and strategies of the
two placement groups, or refuses in one line saying what the plan needs and what the cluster has (and, when CPUs are
what is short, the smaller learner and rollout `cpus_per_worker` that fit). `check_config` is the part that needs no
cluster. The Ray side (`plan_on_cluster`, `reserve_rollout_group`, `learner_scaling`) is thin.

disaggregated: rollout worker i takes {CPU: rollout.cpus_per_worker, GPU: rollout.gpus_per_worker}, learner worker j
  {CPU: learner.cpus_per_worker, GPU: 1 with learner.use_gpu}. A whole-GPU demand only takes a GPU nothing uses, so
  no learner GPU is ever a rollout GPU.
colocated: GPU k holds rollout worker k (share s = rollout.gpus_per_worker, 0.5 < s < 1) and learner worker k (the
  rest, 1 - s). They cannot share one placement-group bundle, because Ray Train makes its own placement group in
  which each worker takes all of its bundle. So the rollout group is reserved first, learner k is pinned to the node
  of rollout bundle k (a Ray Train label selector), and Ray's best fit for a fractional GPU demand (the GPU with the
  least left over; `NodeResourceInstanceSet::TryAllocate` in Ray's src/ray/common/scheduling/resource_instance_set.cc)
  gives it the GPU where exactly 1 - s is free: rollout worker k's. s > 0.5 keeps two rollout workers off one GPU,
  and s + (1 - s) = 1 leaves no room for a second learner. A stage without rollout workers (SFT, SPA, DPO from a
  pairs file) has nothing to share a GPU with: its learners take whole GPUs.
labels: `placement.rollout_label` / `learner_label` ("key=value") keep each kind of worker on the nodes started with
  that Ray label (`ray start --labels`), so that, on a cluster of inference and training nodes, the weights always
  cross from one to the other; an empty label lets Ray choose any node.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from rl.config import Config, ConfigError

EPS = 1e-9
NODE_ID_LABEL = "ray.io/node-id"  # the label Ray gives every node (ray._raylet.RAY_NODE_ID_KEY)


class PlacementError(RuntimeError):
    """The cluster cannot hold the plan; the message says what the plan needs and what the cluster has."""


@dataclass(frozen=True)
class Plan:
    mode: str
    rollout_bundles: tuple[dict[str, float], ...]  # one per rollout worker, one placement group
    rollout_strategy: str
    learner_bundles: tuple[dict[str, float], ...]  # one per learner worker (Ray Train's own placement group)
    learner_strategy: str
    colocated: bool  # learner worker k runs on rollout worker k's node and GPU
    rollout_label: dict[str, str]  # the node label the rollout workers need ({} for any node)
    learner_label: dict[str, str]  # likewise the learner workers (disaggregated)

    @property
    def learner_resources(self) -> dict[str, float]:
        return dict(self.learner_bundles[0])

    def describe(self) -> str:
        parts = [
            f"{name} {len(b)} x {_show(b[0])}"
            for name, b in (("learner", self.learner_bundles), ("rollout", self.rollout_bundles))
            if b
        ]
        labels = [f"{name} on nodes labelled {_label(label)}" for name, label in self.labels() if label]
        total = f"{_count(self.total('GPU'), 'GPU')}, {_count(self.total('CPU'), 'CPU')}"
        return f"{' + '.join(parts)} = {total}{' (' + ', '.join(labels) + ')' if labels else ''}"

    def labels(self) -> list[tuple[str, dict[str, str]]]:
        return [("rollout", self.rollout_label), ("learner", {} if self.colocated else self.learner_label)]

    def total(self, resource: str) -> float:
        return sum(bundle.get(resource, 0.0) for bundle in self.learner_bundles + self.rollout_bundles)


def uses_rollouts(cfg: Config) -> bool:
    """Whether a stage runs rollout workers: the algorithms that learn from their own samples (DPO from a pairs file
    does not)."""
    from rl.algorithms import algorithm  # imports torch, which planning alone does not need

    return algorithm(cfg.algo.name).rollouts(cfg)


def takes_turns_on_gpus(cfg: Config) -> bool:
    """Whether learner and rollout engines take turns on each GPU's memory (rl.runtime.controller.EngineTurns): colocated
    vLLM engines sleep while the learner trains. A colocated HF rollout worker keeps its policy on the GPU."""
    return cfg.placement.mode == "colocated" and cfg.rollout.backend == "vllm" and uses_rollouts(cfg)


def check_config(cfg: Config) -> None:
    """The placement and sharding choices that cannot run whatever the cluster; raises ConfigError in one line."""
    share, colocated = cfg.rollout.gpus_per_worker, cfg.placement.mode == "colocated"
    if share > 1 and share != int(share):
        raise ConfigError(
            f"rollout.gpus_per_worker: {share} is above 1, so it must be a whole number of GPUs "
            "(Ray shares a GPU only in fractions below 1)"
        )
    if colocated and not cfg.learner.use_gpu:
        raise ConfigError(
            "placement.mode: colocated shares GPUs between learner and rollout workers, so it needs "
            "learner.use_gpu=true"
        )
    if colocated and not 0.5 < share < 1:
        raise ConfigError(
            f"rollout.gpus_per_worker: {share} with placement.mode=colocated; it must be in (0.5, 1): "
            "the rollout worker's share of the GPU it shares with one learner worker, which takes the "
            "rest (a share above one half keeps two rollout workers off one GPU)"
        )
    if colocated and uses_rollouts(cfg) and cfg.rollout.num_workers != cfg.learner.num_workers:
        raise ConfigError(
            f"rollout.num_workers: {cfg.rollout.num_workers} with placement.mode=colocated and "
            f"learner.num_workers={cfg.learner.num_workers}; each GPU holds one of each, so they must be "
            "equal"
        )
    vllm = cfg.rollout.vllm
    if cfg.rollout.backend == "vllm" and colocated and vllm.tensor_parallel_size > 1:
        raise ConfigError(
            f"rollout.vllm.tensor_parallel_size: {vllm.tensor_parallel_size} with placement.mode=colocated, where "
            "each rollout worker has part of one GPU; use 1, or placement.mode=disaggregated with "
            "rollout.gpus_per_worker equal to it"
        )
    if cfg.rollout.backend == "vllm" and colocated and vllm.gpu_memory_utilization > share:
        raise ConfigError(
            f"rollout.vllm.gpu_memory_utilization: {vllm.gpu_memory_utilization} with placement.mode=colocated and "
            f"rollout.gpus_per_worker={share}; the engine may hold at most its share of the GPU's memory while it "
            "is awake (the learner keeps its CUDA context and NCCL buffers in the rest); set it to at most "
            f"{share}"
        )
    if cfg.rollout.backend == "vllm" and not colocated and 0 < share and share != vllm.tensor_parallel_size:
        raise ConfigError(
            f"rollout.gpus_per_worker: {share} with rollout.vllm.tensor_parallel_size="
            f"{vllm.tensor_parallel_size}; a vLLM engine shards its LLM over exactly the GPUs its worker holds, "
            "so they must be equal"
        )
    if cfg.learner.strategy == "fsdp2" and cfg.policy.llm_mode != "full":
        raise ConfigError(
            f"learner.strategy: fsdp2 is built and tested for policy.llm_mode=full, not "
            f"{cfg.policy.llm_mode} (LoRA's merge for the export and the vLLM sync reads whole weights; "
            "a frozen LLM is untested); use learner.strategy=ddp"
        )


def parse_label(text: str) -> dict[str, str]:
    """`placement.rollout_label` / `learner_label` / `reward_label` ("key=value", or "" for any node) as a Ray label
    selector."""
    return dict([text.split("=", 1)]) if text else {}


def _label(selector: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in selector.items())


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    # Ray refuses zero-valued entries in a bundle
    return {key: float(value) for key, value in (("CPU", cpus), ("GPU", gpus)) if value > 0}


def make_plan(cfg: Config, rollouts: bool = True) -> Plan:
    """The bundles of a stage, before looking at any cluster; `rollouts` False for a stage without rollout workers."""
    check_config(cfg)
    learner, rollout, place = cfg.learner, cfg.rollout, cfg.placement
    colocated = place.mode == "colocated" and rollouts
    learner_gpu = (1.0 - rollout.gpus_per_worker if colocated else 1.0) if learner.use_gpu else 0.0
    rollout_bundles = tuple(
        _bundle(rollout.cpus_per_worker, rollout.gpus_per_worker) for _ in range(rollout.num_workers if rollouts else 0)
    )
    # Ray Train's resources_per_worker: the CPU entry stays even at 0 (without it Ray Train reserves 1 CPU)
    learner_bundles = tuple(
        {"CPU": float(learner.cpus_per_worker), **_bundle(0, learner_gpu)} for _ in range(learner.num_workers)
    )
    return Plan(
        place.mode if rollouts else "disaggregated",
        rollout_bundles,
        place.rollout_strategy,
        learner_bundles,
        place.learner_strategy,
        colocated,
        parse_label(place.rollout_label) if rollouts else {},
        parse_label(place.learner_label),
    )


class _Node:
    """A node's free resources while bundles are placed: CPU and others as amounts, GPUs one share per device."""

    def __init__(self, resources: dict[str, float], labels: dict[str, str] | None = None):
        self.free = {k: float(v) for k, v in resources.items() if k != "GPU"}
        self.gpus = [1.0] * int(round(resources.get("GPU", 0)))
        self.labels = labels or {}

    def carries(self, selector: dict[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())

    def take(self, bundle: dict[str, float], gpu: int | None = None) -> list[int] | None:
        """Reserve `bundle` here as Ray would (a fraction on the best-fitting GPU, whole GPUs on free ones; `gpu`
        forces that device); returns the GPUs used, or None (nothing changed) when it does not fit."""
        if any(self.free.get(k, 0.0) + EPS < v for k, v in bundle.items() if k != "GPU"):
            return None
        want = bundle.get("GPU", 0.0)
        if want >= 1:
            chosen = [i for i, free in enumerate(self.gpus) if free >= 1 - EPS][: int(want)]
            if len(chosen) < want:
                return None
        elif want > 0:
            fits = [i for i, free in enumerate(self.gpus) if free + EPS >= want]
            best = min(fits, key=lambda i: self.gpus[i] - want, default=None)  # Ray's best fit
            if best is None or (gpu is not None and best != gpu):
                return None
            chosen = [best]
        else:
            chosen = []
        for i in chosen:
            self.gpus[i] -= min(want, 1.0)
        for k, v in bundle.items():
            if k != "GPU":
                self.free[k] -= v
        return chosen


def _place(
    nodes: list[_Node], bundles, strategy: str, selector: dict[str, str] | None = None
) -> list[tuple[int, list[int]]] | None:
    """Each bundle's (node, GPUs) on the nodes that carry `selector`'s labels, following the strategy's rule; None
    when the group does not fit. PACK and SPREAD are Ray's soft preferences (fewest nodes, most nodes); the STRICT
    ones are hard."""
    allowed = [n for n, node in enumerate(nodes) if node.carries(selector or {})]
    if strategy == "STRICT_PACK":
        for n in allowed:
            trial = copy.deepcopy(nodes[n])
            spots = [trial.take(bundle) for bundle in bundles]
            if None not in spots:
                nodes[n] = trial
                return [(n, spot) for spot in spots]
        return None
    placed: list[tuple[int, list[int]]] = []
    for bundle in bundles:
        used = [n for n, _ in placed]
        if strategy == "STRICT_SPREAD":
            order = [n for n in allowed if n not in used]
        elif strategy == "SPREAD":
            order = sorted(allowed, key=used.count)
        else:  # PACK: the nodes this group already uses first
            order = sorted(allowed, key=lambda n: n not in used)
        spot = next(((n, g) for n in order if (g := nodes[n].take(bundle)) is not None), None)
        if spot is None:
            return None
        placed.append(spot)
    return placed


def _fit(plan: Plan, state: list[_Node]) -> str | None:
    """Places the plan's bundles on `state` (which it uses up); None when they fit, else what does not."""
    spots = _place(state, plan.rollout_bundles, plan.rollout_strategy, plan.rollout_label)
    if spots is None:
        return "the rollout workers do not fit" + _on_labelled(plan.rollout_label, state)
    if plan.colocated:
        for k, (bundle, (node, gpus)) in enumerate(zip(plan.learner_bundles, spots, strict=True)):
            if state[node].take(bundle, gpu=gpus[0] if gpus else None) is None:
                return f"learner worker {k} does not fit beside rollout worker {k}"
    elif _place(state, plan.learner_bundles, plan.learner_strategy, plan.learner_label) is None:
        return "the learner workers do not fit" + _on_labelled(plan.learner_label, state)
    return None


def _on_labelled(selector: dict[str, str], state: list[_Node]) -> str:
    if not selector:
        return ""
    return f" on the {sum(node.carries(selector) for node in state)} nodes labelled {_label(selector)}"


def _fewer_cpus(cfg: Config, nodes: list[dict[str, float]], labels: list[dict[str, str]], rollouts: bool) -> str | None:
    """The overrides that would make the plan fit when CPU is what is short: learner.cpus_per_worker and
    rollout.cpus_per_worker halved together (a half, a quarter, ...) until the workers fit with the reward replicas'
    CPUs left beside them (the replicas are not in the plan, but a run waits for them); None when no halving does."""
    from dataclasses import replace

    rewards = rollouts and cfg.reward.mode == "serve" and cfg.reward.cpus_per_replica > 0
    reward_bundles = [{"CPU": cfg.reward.cpus_per_replica}] * (cfg.reward.replicas if rewards else 0)
    reward_label = parse_label(cfg.placement.reward_label)
    keys = [("learner", cfg.learner.cpus_per_worker)] + ([("rollout", cfg.rollout.cpus_per_worker)] if rollouts else [])
    keys = [(section, cpus) for section, cpus in keys if cpus > 0]
    for halvings in range(1, 7):
        smaller = {section: cpus / 2**halvings for section, cpus in keys}
        trial = replace(cfg, **{s: replace(getattr(cfg, s), cpus_per_worker=c) for s, c in smaller.items()})
        state = [_Node(resources, label) for resources, label in zip(nodes, labels, strict=True)]
        if (
            _fit(make_plan(trial, rollouts), state) is None
            and _place(state, reward_bundles, "PACK", reward_label) is not None
        ):
            reserve = sum(bundle["CPU"] for bundle in reward_bundles)
            left = f" with {_count(reserve, 'CPU')} left for the reward replica{'s' if len(reward_bundles) > 1 else ''}"
            overrides = " ".join(f"{section}.cpus_per_worker={c:g}" for section, c in smaller.items())
            cpus = _count(sum(n.get("CPU", 0.0) for n in nodes), "CPU")
            return f"to fit the cluster's {cpus}{left if reward_bundles else ''}, set {overrides}"
    return None


def plan_placement(
    cfg: Config,
    nodes: list[dict[str, float]] | dict[str, float],
    rollouts: bool = True,
    labels: list[dict[str, str]] | None = None,
) -> Plan:
    """The plan of a stage on a cluster of `nodes` (their total resources; `labels`: each one's Ray labels), or
    PlacementError in one line (naming the smaller CPU overrides that would fit, when CPU is what is short)."""
    plan = make_plan(cfg, rollouts)
    nodes = [nodes] if isinstance(nodes, dict) else list(nodes)
    labels = labels or [{} for _ in nodes]
    problem = _fit(plan, [_Node(resources, label) for resources, label in zip(nodes, labels, strict=True)])
    if problem:
        have = {key: sum(n.get(key, 0.0) for n in nodes) for key in ("GPU", "CPU")}
        shapes = (
            ", ".join(sorted({f"{_count(n.get('GPU', 0), 'GPU')} + {_count(n.get('CPU', 0), 'CPU')}" for n in nodes}))
            or "none"
        )
        if have["GPU"] == 0 and plan.total("GPU") > 0:
            problem += " (Ray sees no GPU: start it on GPU machines, or set learner.use_gpu=false and "
            problem += "rollout.gpus_per_worker=0)"
        elif fix := _fewer_cpus(cfg, nodes, labels, rollouts):
            problem += f"; {fix}"
        raise PlacementError(
            f"placement ({plan.mode}): {plan.describe()} needed; the Ray cluster has "
            f"{_count(have['GPU'], 'GPU')}, {_count(have['CPU'], 'CPU')} on {len(nodes)} "
            f"node{'s' if len(nodes) != 1 else ''} ({shapes} per node): {problem}"
        )
    return plan


def _count(value: float, unit: str) -> str:
    text = f"{value:g}"
    return f"{text} {unit}{'' if text == '1' else 's'}"


def _show(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {v:g}" for k, v in sorted(bundle.items(), key=lambda kv: kv[0] != "GPU")) + "}"


# ---- the Ray side ------------------------------------------------------------------------------------------------


def cluster_nodes() -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """The resources and the labels of each live node of the running cluster."""
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    return [node["Resources"] for node in alive], [node.get("Labels") or {} for node in alive]


def plan_on_cluster(cfg: Config, rollouts: bool = True) -> Plan:
    """`plan_placement` on the running cluster. With placement.wait_s > 0 a plan that does not fit yet is asked of
    the autoscaler (which starts nodes only for demands it sees) and retried until it fits or the time is up."""
    deadline, asked = time.monotonic() + cfg.placement.wait_s, False
    while True:
        try:
            resources, labels = cluster_nodes()
            return plan_placement(cfg, resources, rollouts, labels)
        except PlacementError:
            if time.monotonic() >= deadline:
                raise
        if not asked:
            from ray.autoscaler.sdk import request_resources

            plan = make_plan(cfg, rollouts)
            request_resources(
                bundles=[{k: v for k, v in b.items() if v > 0} for b in plan.rollout_bundles + plan.learner_bundles]
            )
            asked = True
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


def reserve_rollout_group(plan: Plan, timeout_s: float = 60.0):
    """The rollout workers' placement group, reserved (None when they need nothing, or there are none). Colocated,
    it must exist before the learner asks for the rest of each GPU."""
    from ray.util.placement_group import placement_group, remove_placement_group

    if not plan.rollout_bundles or not all(plan.rollout_bundles):
        return None
    group = placement_group(
        list(plan.rollout_bundles),
        strategy=plan.rollout_strategy,
        bundle_label_selector=[plan.rollout_label] * len(plan.rollout_bundles) if plan.rollout_label else None,
    )
    if not group.wait(timeout_s):
        remove_placement_group(group)
        raise PlacementError(
            f"placement: the rollout workers' placement group ({plan.describe()}) was not ready "
            f"after {timeout_s:g} s (other jobs hold the resources?)"
        )
    return group


def bundle_nodes(group) -> list[str]:
    """The node id of each bundle of a reserved placement group, in bundle order."""
    from ray.util.placement_group import placement_group_table

    where = placement_group_table(group)["bundles_to_node_id"]
    return [where[i] for i in range(len(where))]


def learner_scaling(cfg: Config, plan: Plan, rollout_group=None):
    """Ray Train's ScalingConfig of the plan; colocated, learner worker k is pinned to rollout bundle k's node."""
    from ray.train import ScalingConfig

    selector = None
    if plan.colocated:
        if rollout_group is None:
            raise PlacementError("placement: colocated learners need the rollout workers' placement group")
        selector = [{NODE_ID_LABEL: node} for node in bundle_nodes(rollout_group)]
    elif plan.learner_label:
        selector = plan.learner_label
    return ScalingConfig(
        num_workers=cfg.learner.num_workers,
        use_gpu=cfg.learner.use_gpu,
        resources_per_worker=plan.learner_resources,
        placement_strategy=plan.learner_strategy,
        label_selector=selector,
    )
