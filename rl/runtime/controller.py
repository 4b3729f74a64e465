"""The controller of one stage: the single Ray actor that owns the data, the rollout workers and the reward client,
builds each step's batch once through the algorithm (it is the algorithm's BatchSource: prompts, rollouts, rewards),
relays each new weights version to
the rollout workers and records the step's metrics. The learner ranks (rl/runtime/learner.py) pull their shards from it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import ray

from data3d import Sample
from rl.algorithms import algorithm
from rl.algorithms.batch import LearnBatch, rollout_sampling, score_rollouts
from rl.config import Config, ConfigError, policy_overrides, run_quant
from rl.eval.viz import pictures_to_draw
from rl.runtime.data import held_out_name, held_out_samples, training_prompts
from rl.runtime.fleet import Fleet
from rl.runtime.metrics import MetricsLog
from rl.runtime.placement import parse_label, takes_turns_on_gpus
from rl.runtime.traces import Traced, note_policy, trace_table, write_trace, write_training_step
from rollout.engine import RolloutBatch


@ray.remote(num_cpus=0.1)
class Controller:
    """The single controller of one stage: owns the data, the rollout workers and the reward client; builds each
    step's batch once (the first learner rank to ask triggers it), syncs weights, records metrics."""

    def __init__(self, config: dict, policy_dir: str, run_dir: str, rollout_group=None):
        import torch

        from policies import load_tokenizer
        from rl.config_loading import config_from_dict
        from rl.runtime.reward_client import make_reward_fn
        from rollout.worker import make_rollout_workers

        torch.set_num_threads(1)
        self.cfg = cfg = config_from_dict(config)
        self.data = training_prompts(cfg)
        self.quant = run_quant(cfg)
        self.algorithm = algorithm(cfg.algo.name)
        self.rollouts = self.algorithm.rollouts(cfg)
        workers = (
            make_rollout_workers(
                cfg.rollout.num_workers,
                policy_dir,
                cfg.rollout.cpus_per_worker,
                cfg.rollout.backend,
                torch_threads=rollout_threads(cfg.rollout.cpus_per_worker),
                gpus_per_worker=cfg.rollout.gpus_per_worker,
                policy_overrides=policy_overrides(cfg),
                placement_group=rollout_group,
                engine_options=vllm_options(cfg),
                max_restarts=cfg.rollout.max_restarts,
            )
            if self.rollouts
            else []
        )
        self.fleet = Fleet(workers, cfg.rollout.answer_wait_s)
        # colocated vLLM gives the GPU memory back while the learner trains on the same GPU
        self.engines = EngineTurns(lambda name: call_engines(self.fleet.taking_part, name), takes_turns_on_gpus(cfg))
        self.engines.sleep()  # the learner loads its policy onto the GPUs next; its first publication wakes them
        self.reward_fn = (
            make_reward_fn(
                cfg.reward.mode,
                cfg.reward.url,
                cfg.reward.timeout_s,
                cfg.reward.replicas,
                cfg.reward.cpus_per_replica,
                label=parse_label(cfg.placement.reward_label),
            )
            if self.rollouts
            else None
        )
        self.tokenizer = load_tokenizer(Path(policy_dir) / "llm")
        self.log = MetricsLog(run_dir, cfg.run.name, cfg.run.steps)
        self.run_dir = run_dir  # where the traces go
        if cfg.trace.samples_per_step:
            note_policy(run_dir, policy_dir)  # the tokenizer that `pointrl replay` cuts the responses with
        # traces are cut into tokens and written on a thread of their own while the next step runs (a step waits
        # only for the trace before it, and the last step for its own), with a tokenizer of their own: a fast
        # tokenizer is not to be shared between threads
        self.trace_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traces")
        self.trace_tokenizer, self.trace_pending = load_tokenizer(Path(policy_dir) / "llm"), None
        self.step_batch, self.step_metrics, self.step_started = None, {}, time.perf_counter()
        self.prefetched: dict[int, list] = {}  # one_step_off: the next step's rollouts, under way
        self.held_out: list[Sample] | None = None  # made on the first periodic evaluation, then reused
        self.pictures = pictures_to_draw(cfg.eval.pictures) if self.rollouts and cfg.eval.every else 0

    def ready(self) -> bool:
        return True

    @property
    def version(self) -> int:
        """The policy version published last (BatchSource's `version`)."""
        return self.fleet.version

    def publish(self, version: int, weights, rollback: bool = False) -> float:
        """Every rollout worker fetches the learner's weights (a Published: refs, unread here) as `version`. The
        learner's first publication of a stage is a `rollback`: restored from a checkpoint after a failure, it
        hands the workers an older version than they hold, and they must take it."""
        began = time.perf_counter()
        self.engines.wake()  # weights load only into an engine that is awake (a restored learner's rollback too)
        self.fleet.publish(version, weights, rollback)
        return time.perf_counter() - began

    def _launch(self, step: int, workers: list) -> list:
        """Start step `step`'s rollouts on `workers` with the version they hold now; returns the refs."""
        from rollout.worker import launch_on_workers

        sampling, use_images = rollout_sampling(self.cfg, step), self.cfg.data.use_images
        return launch_on_workers(workers, self.prompts(step), sampling, self.quant, use_images, self.version)

    def _rollout(self, step: int):
        """Step `step`'s rollouts. one_step_off: those launched while the learner trained on the step before (one
        version old), and step + 1's are launched now, before this step's rewards and update; a prefetch for any
        other step (a restored learner went back) is dropped. The rollouts are launched again on the workers left when
        one dies (rl.runtime.fleet)."""
        from rollout.worker import gather

        pending = self.prefetched.pop(step, None)
        self.prefetched.clear()

        def sample(workers: list):
            nonlocal pending
            refs, pending = pending or self._launch(step, workers), None
            return gather(refs)

        rollout = self.fleet.run(f"step {step + 1} rollout", sample)
        if self.cfg.rollout.mode == "one_step_off" and step + 1 < self.cfg.run.steps:
            self.prefetched[step + 1] = self._launch(step + 1, self.fleet.taking_part)
        return rollout

    # the BatchSource the algorithm builds each step's batch from (rl.algorithms.batch)
    def prompts(self, step: int) -> list[Sample]:
        return self.data.take(step, self.cfg.rollout.prompts_per_step)

    def sample(self, uid: str) -> Sample:
        return self.data.by_uid(uid)

    def rollout(self, step: int) -> RolloutBatch:
        began = time.perf_counter()
        rollout = self._rollout(step)
        self.engines.sleep()  # until the next publication: the learner has the GPU
        # summed over the step's draws (rollout.dynamic_sampling draws again when groups teach nothing)
        timing, tokens = self.rollout_timing, self.rollout_tokens + rollout.tokens_generated
        seconds = timing.get("time/rollout", 0.0) + time.perf_counter() - began
        self.rollout_tokens = tokens
        timing |= {
            "time/rollout": seconds,
            # the slowest worker's time inside its engine (embedding and decoding); the rest of time/rollout is
            # the call through Ray (dispatch, the samples' trip, building the inputs, the batch's return). In
            # one_step_off mode the rollout ran during the update before, so this can exceed time/rollout
            "time/rollout_engine": timing.get("time/rollout_engine", 0.0) + rollout.seconds,
            "rollout/tokens_per_s": tokens / max(seconds, 1e-9),
            "rollout/version": float(rollout.version),
        }
        return rollout

    def score(self, rollout: RolloutBatch, samples: list[Sample]) -> list[dict | None]:
        began = time.perf_counter()
        results = score_rollouts(rollout, samples, self.reward_fn, self.quant)
        timing = self.rollout_timing
        timing["time/reward"] = timing.get("time/reward", 0.0) + time.perf_counter() - began
        return results

    def next_batch(self, step: int, rank: int, world: int) -> LearnBatch:
        """This rank's shard of step `step`'s batch (built on the first request of the step)."""
        if (
            self.step_batch is None or self.step_batch.step != step
        ):  # world divides the prompts: rl.runtime.driver.check_run
            self.step_started = time.perf_counter()
            self.rollout_timing, self.rollout_tokens = {}, 0
            self.step_batch, metrics = self.algorithm.batch(step, self, self.cfg)
            self.step_metrics = {**metrics, **self.rollout_timing}
        return self.step_batch.shard(rank, world)

    def evaluate(self, step: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Greedy answers of the just-published policy on held-out prompts, scored in process (`eval/...`), and the
        pictures of the first `eval.pictures` of them (`eval/picture/<uid>`, as `pointrl viz` draws them); every
        answer is traced (`traces/eval-<step + 1>.parquet`) unless tracing is off."""
        from rl.eval.evaluate import score_answers
        from rl.eval.viz import drawn
        from rollout.engine import SamplingConfig
        from rollout.worker import generate_on_workers

        if self.held_out is None:
            self.held_out = held_out_samples(self.cfg)
        samples = self.held_out
        greedy = SamplingConfig(n=1, do_sample=False, max_new_tokens=self.cfg.eval.max_new_tokens)
        answers = self.fleet.run(
            "evaluation",
            lambda workers: generate_on_workers(
                workers, samples, greedy, self.quant, self.cfg.data.use_images, self.version
            ),
        )
        texts = answers.texts
        if self.cfg.trace.samples_per_step:
            self._trace_evaluation(step, samples, answers)
        report = score_answers(samples, texts, self.quant)
        by_question = {f"eval/answer_{kind}": v["accuracy"] for kind, v in report.pop("answer_by_question").items()}
        pictures = drawn(samples[: self.pictures], texts[: self.pictures], self.quant)
        return (
            {**{f"eval/{k}": v for k, v in report.items()}, **by_question},
            {f"eval/picture/{uid}": pixels for uid, pixels in pictures.items()},
        )

    def _in_background(self, write, *args) -> None:
        """`write(*args)` on the trace thread once the write before it is done (its error, if any, raised here)."""
        self.wait_for_traces()
        self.trace_pending = self.trace_thread.submit(write, *args)

    def wait_for_traces(self) -> None:
        if self.trace_pending is not None:
            pending, self.trace_pending = self.trace_pending, None
            pending.result()

    def _trace_evaluation(self, step: int, samples: list[Sample], answers: RolloutBatch) -> None:
        """Every evaluation answer, scored in process as `score_answers` scores it, to the step's eval trace."""
        from rl.runtime.reward_client import local_rewards

        traced = Traced(
            kind="eval",
            step=step + 1,
            version=answers.version,
            samples=samples,
            indices=list(range(len(samples))),  # held_out_samples: the split's first eval_size
            group_size=1,
            texts=answers.texts,
            response_ids=answers.response_ids,
            response_mask=answers.response_mask,
            rollout_logprobs=answers.logprobs,
            results=score_rollouts(answers, samples, local_rewards(), self.quant),
        )
        table = partial(trace_table, traced, self.trace_tokenizer, held_out_name(self.cfg), self.cfg.algo.name)
        self._in_background(lambda: write_trace(self.run_dir, table()))

    def finish_step(self, step: int, learner_stats: dict[str, float], weights, learner_logprobs=None) -> None:
        """After the update: publish version step + 1 to the rollout workers, trace the step (`learner_logprobs`:
        rank 0's recomputation for its traced rows, rl.runtime.traces), then record the step's metrics."""
        sync = self.publish(step + 1, weights)
        traced = time.perf_counter()
        batch = self.step_batch
        if self.cfg.trace.samples_per_step and batch.scores:  # scored rollouts (not SFT's targets, nor a pairs file)
            self._in_background(
                write_training_step,
                self.run_dir,
                self.cfg,
                step,
                batch,
                batch.scores,
                [self.data.index(sample.uid) for sample in batch.samples],
                self.trace_tokenizer,
                len(batch.shard(0, self.cfg.learner.num_workers).response_texts),
                learner_logprobs,
            )
        traced = time.perf_counter() - traced
        metrics = {
            **self.step_metrics,
            **learner_stats,
            "time/sync": sync,
            "sync/mib": self.fleet.published.nbytes / 2**20,
            "time/trace": traced,
            "time/step": time.perf_counter() - self.step_started,
            **(
                {"rollout/worker_restarts": float(self.fleet.failures), "rollout/workers": float(len(self.fleet.live))}
                if self.fleet.workers
                else {}
            ),
        }
        pictures = {}
        if self.cfg.eval.every and (step + 1) % self.cfg.eval.every == 0 and self.fleet.workers:
            scores, pictures = self.evaluate(step)
            metrics.update(scores)
        echo = (step + 1) % self.cfg.run.log_every == 0 or step + 1 == self.cfg.run.steps
        self.log.log(step, metrics, echo=echo, images=pictures)
        if step + 1 == self.cfg.run.steps:
            self.wait_for_traces()  # the run ends: its last traces are on disk before the driver stops this actor


class EngineTurns:
    """The rollout side of a GPU that a colocated learner shares, one step in order: the engines roll out, sleep
    (vLLM level 1: weights to host memory, KV cache freed), the learner takes the GPU, trains and hands it back
    (rl.runtime.sharding.move_learner) before it publishes, then the engines wake and the new weights load. `call(name)` runs
    `engine.<name>()` on every rollout worker; without `sleeps` (disaggregated, or the HF engine) nothing is called."""

    def __init__(self, call, sleeps: bool):
        self.call, self.sleeps, self.awake = call, sleeps, True

    def sleep(self) -> None:
        if self.sleeps and self.awake:
            self.call("sleep")
            self.awake = False

    def wake(self) -> None:
        if self.sleeps and not self.awake:
            self.call("wake_up")
            self.awake = True


def rollout_threads(cpus: float) -> int:
    """torch threads of a rollout worker from the CPUs Ray reserved for it: more threads than reserved cores would
    compete with the actors sharing them, and a fraction of a core still needs one."""
    return max(1, math.floor(cpus))


def vllm_options(cfg: Config) -> dict | None:
    """The vLLM engine's options (`rollout.vllm`, and `sync.bucket_mb` for its reload calls); colocated, the engine
    must be able to sleep."""
    if cfg.rollout.backend != "vllm":
        return None
    return {
        **dataclasses.asdict(cfg.rollout.vllm),
        "bucket_mb": cfg.sync.bucket_mb,
        **({"enable_sleep_mode": True} if cfg.placement.mode == "colocated" else {}),
    }


ENGINE_SLEEP = ("sleep", "wake_up")  # what a colocated vLLM engine must offer (rollout/vllm_engine.py)


def check_engine_sleep(engine_class: type) -> None:
    """Colocated with vLLM, the controller puts each engine to sleep after its rollouts and wakes it before the
    weight sync; refuse at start an engine that cannot."""
    missing = [name for name in ENGINE_SLEEP if not callable(getattr(engine_class, name, None))]
    if missing:
        raise ConfigError(
            f"placement.mode: colocated with rollout.backend=vllm needs {engine_class.__name__}."
            f"{'() and .'.join(missing)}() (the engine frees its GPU memory while the learner trains "
            "on the same GPU); use placement.mode=disaggregated"
        )


def _call_engine(worker, name: str) -> None:
    # runs inside a RolloutWorker actor, through Ray's __ray_call__ (the actor instance comes first)
    getattr(worker.engine, name)()


def call_engines(workers: list, name: str) -> None:
    """`engine.<name>()` on every rollout worker's engine, concurrently."""
    ray.get([worker.__ray_call__.remote(_call_engine, name) for worker in workers])
