"""The data settings a policy is trained on: points per cloud, image side, keypoints per target and coordinate bins.

One home for their defaults: `pointrl synth`, the samples a run generates on the fly and the demo all use
`DataSettings()`, so a policy trained by `make demo` reads what `pointrl synth` writes. A trained policy directory
carries its settings in `data_settings.json`; `pointrl eval` takes the quantization from there and refuses a dataset
whose settings differ, naming both, rather than scoring a 4-keypoint policy on 16 keypoints without a word.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rewards.schema import Quant

SETTINGS_FILE = "data_settings.json"


@dataclass(frozen=True)
class DataSettings:
    """Four keypoints and 64 bins keep an answer near 105 tokens of the tiny tokenizer, which a small model on 2 CPUs
    can learn to write; 64 bins are 1/32 of the unit sphere's radius in 3D and 2 pixels of a 128-pixel image in 2D."""

    num_points: int = 1024
    image_size: int = 128
    num_kpts: int = 4
    bins: int = 64

    def __post_init__(self) -> None:
        for name in ("num_points", "image_size", "num_kpts"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"data settings: {name} must be a positive integer, got {getattr(self, name)!r}")
        self.quant()  # checks bins

    def quant(self) -> Quant:
        return Quant(bins=self.bins)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataSettings:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def differences(self, other: DataSettings) -> list[str]:
        """`name self vs other` for every setting that differs."""
        return [
            f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def dataset_settings(meta: dict) -> DataSettings:
    """The settings a `pointrl synth` dataset was written with (its meta.json's config and quant)."""
    config = meta.get("config", {})
    return DataSettings(
        num_points=config["num_points"],
        image_size=config["image_size"],
        num_kpts=config["num_kpts"],
        bins=meta["quant"]["bins"],
    )


def save_settings(policy_dir: str | Path, settings: DataSettings) -> None:
    (Path(policy_dir) / SETTINGS_FILE).write_text(json.dumps(settings.to_dict(), indent=1) + "\n")


def load_settings(policy_dir: str | Path) -> DataSettings | None:
    """A policy directory's recorded settings, or None for a policy saved without them (e.g. converted weights)."""
    path = Path(policy_dir) / SETTINGS_FILE
    return DataSettings.from_dict(json.loads(path.read_text())) if path.is_file() else None


def check_compatible(policy: DataSettings, data: DataSettings, policy_dir, data_dir) -> None:
    """Refuse to score a policy on data written with other settings, naming both."""
    differences = policy.differences(data)
    if differences:
        raise ValueError(
            f"{data_dir} was written with other data settings than {policy_dir} was trained on "
            f"(policy vs data: {', '.join(differences)}); regenerate it with `pointrl synth "
            f"--num-points {policy.num_points} --image-size {policy.image_size} --num-kpts "
            f"{policy.num_kpts} --bins {policy.bins}`"
        )
