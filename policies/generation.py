"""Sampling helpers for `PointVLM.generate`: the raw log-probs of sampled tokens, and the response mask."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


class SampledLogprobs(LogitsProcessor):
    """First in the processor list, it sees each step's raw logits (before temperature / top-p). At every
    step it records the token sampled at the step before under that step's raw log-softmax, so only one
    (B, V) distribution is held at a time instead of all T of them."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = scores.float().log_softmax(-1)
        return scores

    def collect(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the generated `sequences` (B, T)."""
        if self.previous is None or len(self.steps) != sequences.shape[1] - 1:
            raise RuntimeError(
                f"recorded {len(self.steps) + (self.previous is not None)} sampling steps for "
                f"{sequences.shape[1]} generated tokens; generate ran steps this recorder did not expect"
            )
        last = self.previous.gather(1, sequences[:, -1:]).squeeze(1)
        return torch.stack(self.steps + [last], dim=1)


def sampling_processors(
    recorder: SampledLogprobs, do_sample: bool, temperature: float, top_p: float
) -> LogitsProcessorList:
    """The recorder, then the temperature and nucleus warpers (generate itself is called with neutral values)."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    processors: list[LogitsProcessor] = [recorder]
    if do_sample and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if do_sample and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList(processors)


def stop_mask(ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(B, T) long mask: 1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device)).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).long()
