"""`pointrl replay RUN --step N`: a traced step's rewards, token spans and advantages computed again, from the traced
responses and the dataset, by the code as it is now, and checked against what the step trained on.

The loop after changing a reward or the routing: an empty diff means the change leaves that step's training signal
as it was. What is recomputed: each response's rewards and field spans (`rewards.score_batch` on the object's targets
and camera, as the reward service scores), each token's field (`rl.algorithms.token_spans.batch_field_masks`) and the
token advantages (the run's algorithm's `advantages`, over the traced whole groups). A response whose reward did not
come back during training stays missing here (a reward service failure is not replayed).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from rewards.schema import FIELDS, REWARDS
from rl.runtime.traces import TraceRun, policy_record

ADVANTAGE_TOLERANCE = 1e-5  # the trace keeps float32 advantages; the recomputation is float32 too
REWARD_TOLERANCE = 1e-9  # rewards travel as float64


def _padded(lists: list[list], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows -> (N, T) right-padded with 0, and the (N, T) mask of the real entries."""
    width = max((len(row) for row in lists), default=0)
    values = torch.zeros(len(lists), width, dtype=dtype)
    mask = torch.zeros(len(lists), width, dtype=torch.long)
    for r, row in enumerate(lists):
        values[r, : len(row)] = torch.tensor(row, dtype=dtype)
        mask[r, : len(row)] = 1
    return values, mask


def _differs(a, b, tolerance: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > tolerance


def replay(run_dir: str | Path, step: int) -> list[str]:
    """The differences between training step `step`'s trace (metrics.jsonl's numbering) and its recomputation, one
    line each; empty when they agree."""
    from policies import load_tokenizer
    from rl.algorithms import algorithm
    from rl.algorithms.advantages import ROUTED_FIELDS
    from rl.algorithms.batch import reward_table, score_rollouts
    from rl.algorithms.token_spans import batch_field_masks
    from rl.config import run_quant
    from rl.runtime.data import training_prompts
    from rl.runtime.reward_client import local_rewards

    run_dir = Path(run_dir)
    traces = TraceRun(run_dir)
    rows = traces.step_table("train", step).to_pylist()
    cfg = traces.config()
    tokenizer = load_tokenizer(Path(json.loads(policy_record(run_dir).read_text())["policy_dir"]) / "llm")
    data, quant, g = training_prompts(cfg), run_quant(cfg), rows[0]["group_size"]
    samples = [data[row["index"]] for row in rows[::g]]
    diffs = [
        f"{row['sample_id']}: traced object {row['uid']} is {samples[k // g].uid} in the data now"
        for k, row in enumerate(rows)
        if samples[k // g].uid != row["uid"]
    ]
    if diffs:
        return diffs
    ids, mask = _padded([row["token_ids"] for row in rows], torch.long)

    responses = SimpleNamespace(texts=[row["response"] for row in rows], group_size=g)  # what score_rollouts reads
    scored = score_rollouts(responses, samples, local_rewards(), quant)
    results = [None if row["missing"] else result for row, result in zip(rows, scored)]
    for row, result in zip(rows, results):
        if result is None:
            continue
        for name in REWARDS:
            if _differs(row[f"reward_{name}"], result["rewards"][name], REWARD_TOLERANCE):
                diffs.append(
                    f"{row['sample_id']} reward {name}: traced {row[f'reward_{name}']}, now {result['rewards'][name]}"
                )
        for name in FIELDS:
            now = result["spans"].get(name)
            if row[f"span_{name}"] != (list(now) if now is not None else None):
                diffs.append(f"{row['sample_id']} span {name}: traced {row[f'span_{name}']}, now {now}")
    spans = [r["spans"] if r else None for r in results]
    owners = batch_field_masks(tokenizer, ids, mask, spans, FIELDS)
    for r, row in enumerate(rows):
        now = [next((name for name in FIELDS if owners[name][r, t]), "") for t in range(len(row["token_ids"]))]
        changed = [t for t, (a, b) in enumerate(zip(row["token_field"], now)) if a != b]
        if changed:
            t = changed[0]
            diffs.append(
                f"{row['sample_id']} token fields: {len(changed)} of {len(now)} tokens moved (first: token {t}, "
                f"traced {row['token_field'][t] or 'background'!r}, now {now[t] or 'background'!r})"
            )
    algo = algorithm(cfg.algo.name)
    if not hasattr(algo, "advantages") or rows[0]["advantages"] is None:
        return diffs  # an algorithm without token advantages (DPO's pairs): rewards and spans only
    table, valid = reward_table(results, len(samples), g)
    fields = list(dict.fromkeys([*cfg.algo.routed_fields, *ROUTED_FIELDS]))  # as GRCA.scored_batch routes
    field_masks = batch_field_masks(tokenizer, ids, mask, spans, fields)
    advantages = algo.advantages(table, field_masks, mask.bool(), valid=valid, cfg=cfg)
    for r, row in enumerate(rows):
        now = advantages[r, : len(row["token_ids"])].tolist()
        changed = [t for t, (a, b) in enumerate(zip(row["advantages"], now)) if abs(a - b) > ADVANTAGE_TOLERANCE]
        if changed:
            t = changed[0]
            diffs.append(
                f"{row['sample_id']} advantages: {len(changed)} of {len(now)} tokens differ (first: token {t}, "
                f"traced {row['advantages'][t]:.6f}, now {now[t]:.6f})"
            )
    return diffs
