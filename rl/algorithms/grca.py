"""GRCA, routed GRPO: each output field's group-standardized reward goes only to the tokens that wrote that field.

"Reinforcing 3D Understanding in Point-VLMs via Geometric Reward Credit Assignment". Per prompt the policy samples G
answers (one JSON object each); the reward service scores every field with its character span (IoU2D/3D, KPA-2D/3D,
RPC, answer, format). A field's reward is standardized within its group (eq. 9) and routed onto its own tokens
(eq. 10); every other token gets the background advantage: standardized format + answer plus λ standardized RPC
(eq. 14). The loss is PPO's clipped surrogate over those token advantages (eqs. 15-16).

Read top to bottom: `GRCA.batch` (on the controller, once per step: sample -> score -> spans -> advantages),
`GRCA.update` (on every learner rank: the clipped surrogate over its shard), and `step`, the two in one process.
Broadcast GRPO (grpo.py) is this class with another `advantages`.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor

from data3d import Sample
from rl.algorithms.advantages import (
    ROUTED_FIELDS,
    TensorsByName,
    advantage_stats,
    other_fields_credit,
    routed_advantages,
)
from rl.algorithms.batch import BatchSource, LearnBatch, reward_metrics, reward_table, rollout_batch
from rl.algorithms.correction import rollout_correction
from rl.algorithms.dynamic_sampling import dynamic_batch
from rl.algorithms.losses import clipped_surrogate_loss, kl_penalty
from rl.algorithms.token_spans import batch_field_masks, span_indices
from rl.algorithms.update import (
    Learner,
    answered_prompts,
    learn_step,
    loss_means,
    micro_batches,
    on_device,
    reconstruction_request,
    sequence_logprobs,
    window_tokens,
    with_reconstruction,
)
from rl.config import Config, correction_mode, recomputes_old_logprobs, run_quant
from rollout.batching import policy_inputs
from rollout.engine import RolloutBatch


class GRCA:
    name = "grca"
    warm_up = True  # GRCA Stage 1: RL starts from the SFT policy
    clips_ratio = True
    recipe: dict = {}  # config values the algorithm stands for, under the user's (rl.config_loading)
    routes = True  # its advantages differ between field spans: algo.ratio=sequence takes a ratio per span

    def rollouts(self, cfg: Config) -> bool:
        return True

    def needs_reference(self, cfg: Config) -> bool:
        return cfg.algo.kl_beta > 0

    def heads(self, cfg: Config) -> dict:
        return {"recon_head": True} if cfg.recon.rl_weight > 0 else {}

    # GRCA eqs. 9, 10, 14: each routed field standardized in its group, on its own tokens; the rest on the background
    def advantages(
        self, rewards: TensorsByName, field_masks: TensorsByName, response_mask: Tensor, *, valid: Tensor, cfg: Config
    ) -> Tensor:
        a = cfg.algo
        return routed_advantages(
            rewards,
            valid,
            field_masks,
            response_mask,
            a.rpc_weight,
            routed_fields=tuple(a.routed_fields),
            routed_weights={f: a.routed_field_weights[f] for f in a.routed_fields},
            divide_by_std=a.advantage_norm == "std",
        )

    def batch(self, step: int, source: BatchSource, cfg: Config) -> tuple[LearnBatch, dict[str, float]]:
        if cfg.rollout.dynamic_sampling:  # DAPO §3.2: groups that teach nothing are replaced by fresh ones
            return dynamic_batch(self, step, source, cfg)
        samples = source.prompts(step)
        rollout = source.rollout(step)  # G outputs per prompt, with the policy version and log-probs that made them
        results = source.score(rollout, samples)  # per-field rewards and character spans (rewards/)
        return self.scored_batch(step, rollout, samples, results, source.tokenizer, cfg)

    def scored_batch(
        self,
        step: int,
        rollout: RolloutBatch,
        samples: list[Sample],
        results: list[dict | None],
        tokenizer,
        cfg: Config,
    ) -> tuple[LearnBatch, dict[str, float]]:
        """The token advantages of a scored rollout, and the reward, advantage and credit metrics (§3.6:
        `credit/other_fields_var/<field>`, how much of a field's token advantage the other rewards put there)."""
        table, valid = reward_table(results, len(samples), rollout.group_size)  # (P, G) per reward
        # eq. 6, character spans -> token masks: the routed fields, and the geometric ones that §3.6 measures
        fields = list(dict.fromkeys([*cfg.algo.routed_fields, *ROUTED_FIELDS]))
        spans = [r["spans"] if r else None for r in results]
        field_masks = batch_field_masks(tokenizer, rollout.response_ids, rollout.response_mask, spans, fields)
        mask = rollout.response_mask.bool()
        advantage_of = partial(self.advantages, valid=valid, cfg=cfg)
        advantages = advantage_of(table, field_masks, mask)  # (P x G, T)
        credit = other_fields_credit(advantage_of, table, valid, advantages, field_masks)
        spans = span_indices(field_masks, cfg.algo.routed_fields) if self.routes else None
        metrics = {
            **reward_metrics(table, valid),
            **{f"advantage/{k}": v for k, v in advantage_stats(advantages, mask).items()},
            **{f"credit/other_fields_{k}/{f}": v for f, measured in credit.items() for k, v in measured.items()},
        }
        learned = {"advantages": advantages, "ratio_spans": spans, "scores": results}
        return rollout_batch(step, rollout, samples, valid, **learned), metrics

    # GRCA eqs. 15-16: the clipped surrogate over token advantages, learner.epochs passes over the shard
    def update(self, learner: Learner, batch: LearnBatch, cfg: Config) -> dict[str, float]:
        policy, reference = learner.policy, learner.reference
        prompts = policy_inputs(policy, batch.samples, run_quant(cfg), cfg.data.use_images)  # [P]
        owners = [row // batch.group_size for row in range(len(batch.response_ids))]  # [P x G]: each row's prompt
        ids, mask, advantages, rollout_logprobs = on_device(
            policy.device, batch.response_ids, batch.response_mask, batch.advantages, batch.rollout_logprobs
        )
        # every log-prob at the sampling temperature and with the stops suppressed before rollout.min_new_tokens, so
        # that the ratio's denominator is the distribution the rollout drew from
        temperature, size, chunk = cfg.rollout.temperature, cfg.learner.micro_batch_size, cfg.learner.logprob_chunk
        scoring = (size, temperature, chunk, cfg.rollout.min_new_tokens)
        ref = sequence_logprobs(reference, prompts, owners, ids, mask, *scoring) if reference else None
        # the ratio's denominator: the rollout's own log-probs where its arithmetic is the learner's, else the
        # learner's recomputation (rl.config.recomputes_old_logprobs), which rollout.correction compares with the
        # rollout's: weights (tis) or a mask (icepop, seq_mask) on each token's term, and the mismatch metrics;
        # one_step_off, the recomputation is decoupled PPO's proximal policy (tis by default)
        behaviour, is_weights, keep, stats, losses = rollout_logprobs, None, None, {}, []
        if recomputes_old_logprobs(cfg):
            behaviour = batch.learner_logprobs = sequence_logprobs(policy, prompts, owners, ids, mask, *scoring)
            correction = (correction_mode(cfg), cfg.algo.max_is_weight, cfg.rollout.correction_bounds)
            is_weights, keep, stats = rollout_correction(behaviour, rollout_logprobs, mask, *correction)
        a, spans = cfg.algo, batch.ratio_spans
        for _ in range(cfg.learner.epochs):
            chunks = micro_batches(len(ids), size)
            tokens = window_tokens(mask, chunks, cfg.learner.grad_accum)  # algo.loss_agg=token_mean's denominators
            learner.accumulator.epoch(len(chunks))
            for rows, window in zip(chunks, tokens):
                answered, expand = answered_prompts(prompts, [owners[r] for r in rows])
                recon = reconstruction_request(policy, answered, cfg.recon.rl_weight, cfg)
                logp, extras = learner.scorer(
                    answered,
                    ids[rows],
                    mask[rows],
                    temperature,
                    recon=recon,
                    expand=expand,
                    min_new_tokens=cfg.rollout.min_new_tokens,
                )
                loss, info = clipped_surrogate_loss(
                    logp,
                    behaviour[rows],
                    advantages[rows],
                    mask[rows],
                    a.clip_eps,
                    a.clip_eps_high,
                    None if is_weights is None else is_weights[rows],
                    None if keep is None else keep[rows],
                    objective=a.loss,
                    spans=None if spans is None else spans[rows],
                    sequence_ratio=a.ratio == "sequence",
                    loss_agg=a.loss_agg,
                    agg_tokens=window,
                    max_tokens=cfg.rollout.max_new_tokens,
                )
                loss, info = with_reconstruction(loss, info, extras, cfg.recon.rl_weight)
                if ref is not None:
                    kl, kl_info = kl_penalty(logp, ref[rows], mask[rows], cfg.algo.kl_beta)
                    loss, info = loss + kl, {**info, **kl_info}
                learner.accumulator.backward(loss)
                losses.append({**info, "total": float(loss.detach())})
        return {**stats, **loss_means(losses)}

    def learning_rows(self, batch: LearnBatch) -> int:
        return int(batch.valid.sum())  # the responses whose reward came back


ALGORITHM = GRCA


def step(step: int, source: BatchSource, learner: Learner, cfg: Config, algorithm: GRCA | None = None) -> dict:
    """One whole step in one process: sample -> score -> spans -> advantages (`batch`), then the update and the LR
    schedule (`learn_step`). The runtime runs the same two halves: `batch` on its controller, the update on every
    learner rank with that rank's shard. `algorithm`: GRCA, or a sibling such as GRPO."""
    algorithm = algorithm or GRCA()
    batch, metrics = algorithm.batch(step, source, cfg)
    return {**metrics, **learn_step(learner, algorithm, batch, cfg)}
