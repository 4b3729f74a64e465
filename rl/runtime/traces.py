"""What each step trained on, as a user can open it: one Parquet file per step under `run.dir/traces/`.

`traces/train-000012.parquet` holds the traced responses of step 12 (metrics.jsonl's step 12), one row each: the
object's uid and dataset (not its points), the prompt, the response text and token ids, each token's character range
and the field it wrote, its rollout and learner log-probs and its advantage, each field's span and reward, the
missing/invalid flags, the policy version and staleness, and the truncated importance weights where the loss used
them (rollout.mode=one_step_off). `traces/eval-000012.parquet` holds every answer of the evaluation after step 12
(greedy, no advantages). `pandas.read_parquet(run_dir / "traces")` reads them all.

Which rows: the first `trace.samples_per_step` responses of the step, rounded up to whole groups (a group's rewards
are standardized together, so `pointrl replay` needs all of it) and never past learner rank 0's shard: rank 0 sends
the controller its shard's learner log-probs with its statistics (`learner_logprobs_of`), so the traced rows are
the first rows of that shard. When the learner does not recompute them (rl.config.recomputes_old_logprobs is false)
the rollout's log-probs are the learner's by the precision contract (policies/roles.py): the trace says so in
`learner_logprobs_from` ("rollout") and repeats them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from data3d import Sample
from rewards.schema import FIELDS, REWARDS

if TYPE_CHECKING:  # torch only where the tensors are: the viewer reads traces without it
    from torch import Tensor

    from rl.algorithms.batch import LearnBatch
    from rl.config import Config

TRACE_DIR = "traces"
KINDS = ("train", "eval")
# the columns of the listing (`summaries`): everything but the per-token lists, read from every file at once
SUMMARY = (
    "sample_id",
    "kind",
    "step",
    "row",
    "uid",
    "dataset",
    "version",
    "missing",
    *(f"reward_{name}" for name in REWARDS),
    *(f"invalid_{name}" for name in FIELDS),
)


@dataclass
class Traced:
    """One step's responses as the trace takes them (row p * G + g answers samples[p]); tensors are (N, T)."""

    kind: str  # "train" or "eval"
    step: int  # metrics.jsonl's step: the 0-based training step + 1
    version: int  # the policy version that wrote the responses
    samples: list[Sample]
    indices: list[int]  # each sample's index in its split (`pointrl traces` and `replay` load the object from it)
    group_size: int
    texts: list[str]
    response_ids: Tensor
    response_mask: Tensor
    rollout_logprobs: Tensor
    results: list[dict | None]  # the reward service's result per response (None: it did not come back)
    advantages: Tensor | None = None  # (N, T) for training rows
    learner_logprobs: Tensor | None = None  # (N, T) when the learner recomputed them
    importance_weights: Tensor | None = None  # (N, T) the truncated importance weights (rollout.correction tis)


def traced_rows(samples_per_step: int, group_size: int, shard_rows: int) -> int:
    """How many of a step's first rows are traced: whole groups covering `samples_per_step`, within rank 0's shard."""
    if samples_per_step <= 0:
        return 0
    return min(shard_rows, math.ceil(samples_per_step / group_size) * group_size)


def learner_logprobs_of(batch: LearnBatch, samples_per_step: int) -> Tensor | None:
    """What learner rank 0 sends the controller with its statistics: the recomputed log-probs of the traced rows of
    its shard (None when the update did not recompute them, or tracing is off)."""
    rows = traced_rows(samples_per_step, batch.group_size, len(batch.response_texts))
    if rows == 0 or batch.learner_logprobs is None:
        return None
    return batch.learner_logprobs[:rows].detach().cpu()


def training_trace(
    step: int,
    batch: LearnBatch,
    results: list[dict | None],
    indices: list[int],
    rows: int,
    learner_logprobs: Tensor | None = None,
    tis: tuple[float, list[float]] | None = None,
) -> Traced:
    """The first `rows` rows of training step `step` (0-based) as traced: `batch` the step's LearnBatch, `results`
    its rewards, `indices` its prompts' places in the training split; with `tis` = (algo.max_is_weight,
    rollout.correction_bounds) (rollout.correction tis, one_step_off's default) the truncated importance weights of
    the learner's log-probs to the rollout's, as the loss weighed them."""
    from rl.algorithms.correction import rollout_correction

    g = batch.group_size
    mask, rollout = batch.response_mask[:rows], batch.rollout_logprobs[:rows]
    weights = None
    if tis is not None and learner_logprobs is not None:
        weights, _, _ = rollout_correction(learner_logprobs, rollout, mask, "tis", *tis)
    return Traced(
        kind="train",
        step=step + 1,
        version=batch.version,
        samples=batch.samples[: rows // g],
        indices=indices[: rows // g],
        group_size=g,
        texts=batch.response_texts[:rows],
        response_ids=batch.response_ids[:rows],
        response_mask=mask,
        rollout_logprobs=rollout,
        results=results[:rows],
        advantages=None if batch.advantages is None else batch.advantages[:rows],  # DPO learns from pairs
        learner_logprobs=learner_logprobs,
        importance_weights=weights,
    )


def write_training_step(
    run_dir: str | Path,
    cfg: Config,
    step: int,
    batch: LearnBatch,
    results: list[dict | None],
    indices: list[int],
    tokenizer,
    shard_rows: int,
    learner_logprobs: Tensor | None = None,
) -> None:
    """Trace training step `step` (0-based) of a run with config `cfg`: the traced rows of `batch` (within rank 0's
    `shard_rows`) with their `results`, its prompts' `indices` in the training split and rank 0's
    `learner_logprobs`, to the step's file."""
    from rl.config import correction_mode
    from rl.runtime.data import training_name

    rows = traced_rows(cfg.trace.samples_per_step, batch.group_size, shard_rows)
    if rows == 0:
        return
    tis = (cfg.algo.max_is_weight, cfg.rollout.correction_bounds) if correction_mode(cfg) == "tis" else None
    traced = training_trace(step, batch, results, indices, rows, learner_logprobs, tis)
    write_trace(run_dir, trace_table(traced, tokenizer, training_name(cfg), cfg.algo.name))


def _kept(values: Tensor | None, mask: Tensor) -> list[list[float]] | None:
    """Each row's values at its response tokens (the padding dropped), or None."""
    if values is None:
        return None
    return [row[keep.bool()].tolist() for row, keep in zip(values.cpu(), mask.cpu())]


def trace_table(traced: Traced, tokenizer, dataset: str, algo: str) -> pa.Table:
    """The rows of `traced` as a table (the character ranges and field of each token from its tokenizer)."""
    from rl.algorithms.token_spans import batch_token_char_offsets, field_token_masks

    mask = traced.response_mask.cpu()
    n = len(traced.texts)
    ids = _kept(traced.response_ids, mask)
    offsets = batch_token_char_offsets(tokenizer, ids)  # the tokenizer's work, once: the fields come from them
    owner = []
    for row_offsets, result in zip(offsets, traced.results):
        row_owner = [""] * len(row_offsets)
        for name, field_mask in field_token_masks(row_offsets, result["spans"] if result else None, FIELDS).items():
            for t in field_mask.nonzero().flatten().tolist():
                row_owner[t] = name
        owner.append(row_owner)
    rollout = _kept(traced.rollout_logprobs, mask)
    learner = _kept(traced.learner_logprobs, mask)
    g = traced.group_size
    sample_of = [traced.samples[r // g] for r in range(n)]
    floats, ints = pa.list_(pa.float32()), pa.list_(pa.int32())
    columns = {
        "sample_id": [f"{traced.kind}-{traced.step:06d}-{r:04d}" for r in range(n)],
        "kind": [traced.kind] * n,
        "step": pa.array([traced.step] * n, pa.int32()),
        "row": pa.array(range(n), pa.int32()),
        "group": pa.array([r // g for r in range(n)], pa.int32()),
        "group_size": pa.array([g] * n, pa.int32()),
        "algo": [algo] * n,
        "uid": [s.uid for s in sample_of],
        "index": pa.array([traced.indices[r // g] for r in range(n)], pa.int32()),
        "dataset": [dataset] * n,
        "question_type": [s.question_type for s in sample_of],
        "prompt": [s.instruction for s in sample_of],
        "response": traced.texts,
        "token_ids": pa.array(ids, ints),
        "token_start": pa.array([[a for a, _ in row] for row in offsets], ints),
        "token_end": pa.array([[b for _, b in row] for row in offsets], ints),
        "token_field": owner,
        "rollout_logprobs": pa.array(rollout, floats),
        "learner_logprobs": pa.array(learner or rollout, floats),
        "learner_logprobs_from": ["learner" if learner else "rollout"] * n,
        "advantages": pa.array(_kept(traced.advantages, mask) or [None] * n, floats),
        "importance_weights": pa.array(_kept(traced.importance_weights, mask) or [None] * n, floats),
        "version": pa.array([traced.version] * n, pa.int32()),
        # the learner's version lag (training step - rollout version); an evaluation answers with the current policy
        "staleness": pa.array([traced.step - 1 - traced.version if traced.kind == "train" else 0] * n, pa.int32()),
        "missing": [r is None for r in traced.results],
        "errors": [r["errors"] if r else [] for r in traced.results],
    }
    for name in REWARDS:
        columns[f"reward_{name}"] = pa.array([r["rewards"][name] if r else None for r in traced.results], pa.float64())
    for name in FIELDS:
        columns[f"span_{name}"] = pa.array([(r["spans"].get(name) if r else None) for r in traced.results], ints)
        columns[f"invalid_{name}"] = [bool(r) and r["spans"].get(name) is None for r in traced.results]
    return pa.table(columns)


def policy_record(run_dir: str | Path) -> Path:
    """Where the run notes the policy directory whose tokenizer cut its traces into tokens (`pointrl replay`); beside
    traces/, which holds only Parquet files (so that `pandas.read_parquet(run_dir / "traces")` reads them all)."""
    return Path(run_dir) / "traces.json"


def note_policy(run_dir: str | Path, policy_dir: str | Path) -> None:
    path = policy_record(run_dir)
    path.write_text(json.dumps({"policy_dir": str(Path(policy_dir).resolve())}))


def trace_path(run_dir: str | Path, kind: str, step: int) -> Path:
    return Path(run_dir) / TRACE_DIR / f"{kind}-{step:06d}.parquet"


def write_trace(run_dir: str | Path, table: pa.Table) -> Path:
    """Write one step's table (zstd) through a `.partial` renamed over the step's file: a step redone after a restore
    replaces its trace, and a kill mid-write leaves no half file."""
    kind, step = table["kind"][0].as_py(), table["step"][0].as_py()
    path = trace_path(run_dir, kind, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, compression="zstd")
    os.replace(partial, path)
    return path


class TraceRun:
    """The traces of one run directory, read back. The listing columns (`SUMMARY`) are read once, every new file's
    in one multithreaded pass (pyarrow.dataset), and kept: listing again reads only the steps written since; a file
    rewritten since (a step redone after a restore) has everything read again."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / TRACE_DIR
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"{self.run_dir}: no traces/ here (a run with trace.samples_per_step > 0 writes it)"
            )
        self._read: dict[Path, float] = {}  # the files in `_listing`, with the modification time they were read at
        self._listing = pa.table({name: [] for name in SUMMARY})

    def config(self) -> Config:
        """The run's config (its config.yaml), which says where its prompts come from."""
        from rl.config_loading import load_config

        path = self.run_dir / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{self.run_dir}: no config.yaml (not a run directory)")
        return load_config(path)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet"))

    def summaries(self) -> pa.Table:
        """The listing columns of every traced sample, in the order their files were first read."""
        import pyarrow.dataset as ds

        files = {path: path.stat().st_mtime for path in self.files()}
        if any(files.get(path) != mtime for path, mtime in self._read.items()):  # rewritten or removed
            self._read, self._listing = {}, pa.table({name: [] for name in SUMMARY})
        new = [str(path) for path in files if path not in self._read]
        if new:
            read = ds.dataset(new, format="parquet").to_table(columns=list(SUMMARY))
            self._listing = pa.concat_tables([self._listing, read], promote_options="permissive")
            self._read.update({Path(path): files[Path(path)] for path in new})
        return self._listing

    def step_table(self, kind: str, step: int) -> pa.Table:
        path = trace_path(self.run_dir, kind, step)
        if not path.is_file():
            raise KeyError(f"no {kind} trace of step {step} in {self.dir}")
        return pq.read_table(path)

    def sample(self, sample_id: str) -> dict:
        """The whole row of `sample_id` (`<kind>-<step>-<row>`, as the table's sample_id column writes it)."""
        kind, _, rest = sample_id.partition("-")
        step, _, row = rest.partition("-")
        if kind not in KINDS or not step.isdigit() or not row.isdigit():
            raise KeyError(f"{sample_id!r} is not a sample id (<train|eval>-<step>-<row>, e.g. train-000003-0001)")
        table = self.step_table(kind, int(step))
        if int(row) >= table.num_rows:
            raise KeyError(f"{sample_id!r}: step {int(step)} traced {table.num_rows} {kind} samples")
        return table.slice(int(row), 1).to_pylist()[0]
