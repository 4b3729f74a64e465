"""TRL's arm of bench/step_bench.py, in a process of its own: `GRPOTrainer` on the policy's LLM, timed by phase.

    python bench/step_bench_trl.py SPEC      (step_bench.py writes SPEC: its arguments, the data, the paths)

It writes the per-step phase times of steps 2.. to the SPEC's result file; step_bench.py's docstring says what is
timed and why the settings are TRL's equal of pointrl's.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, when run as a script


def trl_worker(spec_file: str) -> None:
    """TRL's arm, in its own process: GRPOTrainer on the policy's LLM; writes its per-step phase times."""
    spec = pickle.loads(Path(spec_file).read_bytes())
    args, data = spec["args"], spec["data"]
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from data3d import reward_sample
    from policies.hf_llm import load_tokenizer
    from rewards import score_batch

    llm_dir = Path(spec["policy_dir"]) / "llm"
    samples, weights = data["samples"], data["weights"]
    clock = {"generate": 0.0, "reward": 0.0, "score": 0.0, "lengths": []}
    steps: list[dict] = []

    def pointrl_reward(prompts, completions, index, **_):
        results = score_batch([reward_sample(samples[i], text) for i, text in zip(index, completions)], data["quant"])
        return [sum(w * r["rewards"][name] for name, w in weights.items()) for r in results]

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            began = time.perf_counter()
            out = super()._generate(prompts)
            clock["generate"] += time.perf_counter() - began
            clock["lengths"] += [len(ids) for ids in out[1]]  # completion_ids
            clock["threads"] = torch.get_num_threads()  # what the Trainer left of set_num_threads
            return out

        def _calculate_rewards(self, *a, **k):
            began = time.perf_counter()
            out = super()._calculate_rewards(*a, **k)
            clock["reward"] += time.perf_counter() - began
            return out

        def _generate_and_score_completions(self, inputs):
            began = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            clock["score"] += time.perf_counter() - began
            return out

    class StepClock(TrainerCallback):
        """One pointrl step = optimizer steps 2k and 2k+1 (one generation, then its two updates)."""

        def on_step_begin(self, _args, state, control, **kwargs):
            if state.global_step % 2 == 0:
                clock.update(began=time.perf_counter(), generate=0.0, reward=0.0, score=0.0)

        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % 2 == 0:  # global_step has just counted the second update
                step = time.perf_counter() - clock["began"]
                rest = clock["score"] - clock["generate"] - clock["reward"]
                train = step - clock["score"]
                steps.append(
                    dict(generate=clock["generate"], reward=clock["reward"], score_rest=rest, train=train, step=step)
                )

    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=spec["out_dir"],
        max_steps=2 * args.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=2,
        num_generations=args.group,
        max_completion_length=args.tokens,
        generation_kwargs={"min_new_tokens": args.tokens},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        loss_type="grpo",  # each sample's tokens averaged, then the samples (pointrl's; equal lengths here anyway)
        scale_rewards="group",
        learning_rate=spec["lr"],  # pointrl's
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,  # GRPOConfig's default is bf16; pointrl's policy trains in float32
        gradient_checkpointing=False,  # GRPOConfig's default is on; pointrl's activation checkpointing is off
        use_cpu=True,
        shuffle_dataset=False,  # the prompts in pointrl's order, so that step k has the same prompts in both
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    dataset = Dataset.from_list([{"prompt": p, "index": i} for i, p in enumerate(data["prompts"])])
    trainer = TimedGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32),
        reward_funcs=pointrl_reward,
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(llm_dir),  # the policy's own tokenizer, as pointrl reads the prompts
        callbacks=[StepClock()],
    )
    trainer.train()
    lengths = sorted(set(clock["lengths"]))
    result = {"steps": steps[1:], "completion_lengths": lengths, "threads": clock["threads"]}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    trl_worker(sys.argv[1])
