"""The prompts of a run: its training set (walked in a seeded order, so a resumed run continues it) and its held-out
objects (the dataset's eval split, or generated with `held_out_seed`)."""

from __future__ import annotations

import numpy as np

from data3d import BenchmarkDataset, Sample, generate_sample
from rl.config import Config


class TrainingSet:
    """The prompts of a run: a `pointrl synth` split read lazily, or the procedural benchmark generated on the fly."""

    def __init__(self, cfg: Config, split: str, size: int, seed: int):
        self.dataset = BenchmarkDataset(cfg.data.dir, split) if cfg.data.dir else None
        self.size = len(self.dataset) if self.dataset is not None else size
        self.cfg, self.seed = cfg, seed
        self.cache: dict[int, Sample] = {}
        if self.size == 0:
            raise ValueError(f"data: the {split} split of {cfg.data.dir} is empty")
        # the run's seed reorders the prompts too: runs that differ only in run.seed see them in other orders
        self.order = np.random.default_rng([self.seed, cfg.run.seed]).permutation(self.size)

    def __getitem__(self, index: int) -> Sample:
        if index not in self.cache:
            d = self.cfg.data
            self.cache[index] = (
                self.dataset[index]
                if self.dataset is not None
                else generate_sample(
                    self.seed,
                    index,
                    num_points=d.num_points,
                    image_size=d.image_size,
                    num_kpts=d.num_kpts,
                    relevance=d.relevance,
                )
            )
        return self.cache[index]

    def index(self, uid: str) -> int:
        """Where the sample `uid` is in the split: among the samples read so far (a step's prompts are), else by
        reading every sample once."""
        found = next((index for index, sample in self.cache.items() if sample.uid == uid), None)
        if found is not None:
            return found
        if not hasattr(self, "index_of"):
            self.index_of = {self[i].uid: i for i in range(self.size)}
        if uid not in self.index_of:
            raise KeyError(f"uid {uid!r} is not in the training data")
        return self.index_of[uid]

    def by_uid(self, uid: str) -> Sample:
        return self[self.index(uid)]

    def indices(self, step: int, count: int) -> list[int]:
        """Where the prompts of `step` are in the split: a seeded permutation walked in order, so a resumed run
        continues the sequence."""
        return [int(self.order[(step * count + j) % self.size]) for j in range(count)]

    def take(self, step: int, count: int) -> list[Sample]:
        """The prompts of `step` (at `indices`)."""
        return [self[index] for index in self.indices(step, count)]


def training_prompts(cfg: Config) -> TrainingSet:
    """The run's training prompts."""
    return TrainingSet(cfg, "train", cfg.data.train_size, cfg.data.seed)


def held_out_seed(cfg: Config) -> int:
    """The seed of the generated held-out objects: the training seed's neighbour, objects the run never trains on."""
    return cfg.data.seed + 1


def held_out_set(cfg: Config) -> TrainingSet:
    """The split the evaluation prompts come from: the dataset's eval split, or generated with another seed."""
    return TrainingSet(cfg, cfg.eval.split, cfg.data.eval_size, held_out_seed(cfg))


def held_out_samples(cfg: Config) -> list[Sample]:
    """The evaluation prompts: the first eval_size of `held_out_set` (objects never trained on)."""
    held_out = held_out_set(cfg)
    return [held_out[i] for i in range(min(held_out.size, cfg.data.eval_size))]


def held_out_name(cfg: Config) -> str:
    """Where the evaluation prompts come from, in words (evaluation reports and traces)."""
    return f"{cfg.data.dir}:{cfg.eval.split}" if cfg.data.dir else f"generated with seed {held_out_seed(cfg)}"


def training_name(cfg: Config) -> str:
    """Where the training prompts come from, in words (traces)."""
    return f"{cfg.data.dir}:train" if cfg.data.dir else f"generated with seed {cfg.data.seed}"
