"""What every rollout backend shares: the sampling settings, the versioned batch it returns, the engine protocol,
and the pure helpers that shard prompts over workers and put their batches back together."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import torch

from policies import PolicyInputs

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample G = `n` responses per prompt. `seed` None draws fresh randomness; `do_sample` False decodes
    greedily (the G rows of a prompt are then equal). No stop token ends a response before `min_new_tokens`
    (benchmarks set it to `max_new_tokens` to force equal lengths)."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    do_sample: bool = True
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"SamplingConfig: need n >= 1, max_new_tokens >= 1 and 0 <= min_new_tokens <= max_new_tokens, got "
                f"n={self.n}, max_new_tokens={self.max_new_tokens}, min_new_tokens={self.min_new_tokens}"
            )
        # vLLM refuses temperatures above 2 (SamplingParams); refusing them here keeps both backends alike
        if not 0 < self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"SamplingConfig: need 0 < temperature <= 2 and 0 < top_p <= 1, got "
                f"temperature={self.temperature}, top_p={self.top_p}"
            )


@dataclass
class RolloutBatch:
    """P prompts x G samples from one policy version; row p * G + g is the g-th sample of prompt `uids[p]`.

    `logprobs` are the sampled tokens' log-probs under softmax(logits / temperature), before top-p (greedy decoding:
    temperature 1), the quantity the learner recomputes with the same temperature; `texts` are the responses decoded
    with the policy tokenizer (special tokens skipped), the strings whose character spans the rewards report.
    `seconds` is the wall time that produced the batch."""

    version: int
    uids: list[str]
    response_ids: torch.Tensor  # (P*G, T) int64, right padded with the pad token after the stop token
    response_mask: torch.Tensor  # (P*G, T) int64, 1 up to and including the first stop token
    logprobs: torch.Tensor  # (P*G, T) float32, 0 where the mask is 0
    texts: list[str]  # P*G
    tokens_generated: int
    seconds: float
    pad_token_id: int  # the id after each row's stop token, so that shards can be padded to one width

    def __post_init__(self) -> None:
        rows = len(self.texts)
        if not self.uids or rows % len(self.uids):
            raise ValueError(f"RolloutBatch: {rows} responses do not split into groups over {len(self.uids)} prompts")
        shapes = {tuple(t.shape) for t in (self.response_ids, self.response_mask, self.logprobs)}
        if len(shapes) != 1 or next(iter(shapes))[0] != rows:
            raise ValueError(f"RolloutBatch: ids / mask / logprobs shapes {sorted(shapes)} do not match {rows} texts")

    @property
    def group_size(self) -> int:
        return len(self.texts) // len(self.uids)

    def groups(self, prompts: list[int]) -> RolloutBatch:
        """The batch of these prompts' groups only, in the given order."""
        g = self.group_size
        rows = [p * g + k for p in prompts for k in range(g)]
        return replace(
            self,
            uids=[self.uids[p] for p in prompts],
            response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows],
            logprobs=self.logprobs[rows],
            texts=[self.texts[r] for r in rows],
            tokens_generated=int(self.response_mask[rows].sum()),
        )

    def cpu(self) -> RolloutBatch:
        """A copy whose tensors are detached, contiguous and on the CPU: what crosses the Ray object store."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu").contiguous()

        return replace(
            self,
            response_ids=move(self.response_ids),
            response_mask=move(self.response_mask),
            logprobs=move(self.logprobs).float(),
        )


class RolloutEngine(Protocol):
    """A sampler over one policy version.

    `generate(inputs, uids, sampling)` samples `sampling.n` responses for each of the P prompts in `inputs`
    (`rollout.batching.policy_inputs`, one uid per prompt) and returns them as a `RolloutBatch` tagged with
    `version`. `load_weights(state, version, rollback=False)` installs the trainable tensors
    (`PointVLM.trainable_state_dict()` names) published as `version`, refusing a version older than the current one
    unless `rollback` (`check_version_order`); with `share`, the policy may keep the given tensors as its parameters
    instead of copying them (`PointVLM.load_trainable_state_dict`)."""

    @property
    def version(self) -> int: ...

    def generate(self, inputs: PolicyInputs, uids: list[str], sampling: SamplingConfig) -> RolloutBatch: ...

    def load_weights(
        self, state: dict[str, torch.Tensor], version: int, rollback: bool = False, share: bool = False
    ) -> None: ...


def check_one_uid_per_prompt(uids: list[str], inputs: PolicyInputs) -> None:
    if len(uids) != len(inputs):
        raise ValueError(f"{len(uids)} uids for {len(inputs)} prompts")


def check_version_order(current: int, new: int, rollback: bool = False) -> None:
    """Weights only move forward: a stale publication must never overwrite newer weights. `rollback` is the one
    exception: a learner restored from its last checkpoint republishes that checkpoint's older version on purpose."""
    if new < current and not rollback:
        raise ValueError(f"refusing weights of version {new}: version {current} is already loaded")


def sampled_batch(
    version: int,
    uids: list[str],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    logprobs: torch.Tensor,
    texts: list[str],
    pad_token_id: int,
    start: float,
) -> RolloutBatch:
    """The `RolloutBatch` an engine's `generate` returns for its sampled responses (`RolloutBatch`'s fields): the
    log-probs as float32, `tokens_generated` the mask's sum, `seconds` the time since `start` (a
    `time.perf_counter()` reading taken when sampling began)."""
    return RolloutBatch(
        version=version,
        uids=list(uids),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs.float(),
        texts=texts,
        tokens_generated=int(response_mask.sum()),
        seconds=time.perf_counter() - start,
        pad_token_id=pad_token_id,
    )


def split_evenly(items: list[T], k: int) -> list[list[T]]:
    """`items` cut into k contiguous shards whose sizes differ by at most one (the first ones larger); shards
    may be empty when there are fewer items than k. Concatenating the shards gives `items` back."""
    if k < 1:
        raise ValueError(f"split_evenly: need k >= 1 shards, got {k}")
    size, extra = divmod(len(items), k)
    bounds = [i * size + min(i, extra) for i in range(k + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(k)]


def _right_pad(t: torch.Tensor, width: int, value: float | int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """The shards' batches in order as one batch. All must share one version, group size and pad token; the
    widths are right padded to the longest; `seconds` is the slowest shard's (shards run concurrently)."""
    if not batches:
        raise ValueError("concat_batches: no batches")
    for what in ("version", "group_size", "pad_token_id"):
        values = [getattr(b, what) for b in batches]
        if len(set(values)) != 1:
            raise ValueError(f"concat_batches: shards disagree on {what}: {values}")
    pad_token_id = batches[0].pad_token_id
    width = max(b.response_ids.shape[1] for b in batches)
    return RolloutBatch(
        version=batches[0].version,
        uids=[u for b in batches for u in b.uids],
        response_ids=torch.cat([_right_pad(b.response_ids, width, pad_token_id) for b in batches]),
        response_mask=torch.cat([_right_pad(b.response_mask, width, 0) for b in batches]),
        logprobs=torch.cat([_right_pad(b.logprobs, width, 0.0) for b in batches]),
        texts=[t for b in batches for t in b.texts],
        tokens_generated=sum(b.tokens_generated for b in batches),
        seconds=max(b.seconds for b in batches),
        pad_token_id=pad_token_id,
    )
