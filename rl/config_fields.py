"""The building blocks of the configuration tree (`rl.config`): `setting`, the one line that declares a key, its range
checks, `ConfigError`, and the choice lists and constants the sections and their readers share. Free of torch."""

from __future__ import annotations

import copy
from dataclasses import field
from pathlib import Path
from typing import Any

from data3d.settings import DataSettings
from data3d.shapes import CATEGORIES, COLOUR_NAMES
from rewards.schema import FIELDS, REWARDS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LLM_MODES = ("full", "lora", "frozen")  # the same as policies.inputs (a test checks it), kept here to stay torch-free
LLM_DTYPES = ("float32", "bfloat16", "float16")  # likewise policies.inputs.LLM_DTYPES
FUSIONS = ("learned", "camera")  # likewise policies.inputs.FUSIONS
ALIGN_CATEGORIES = tuple(sorted(CATEGORIES))  # the cloud-alignment head's outputs: the box (6), these, then colours
ALIGN_COLOURS = COLOUR_NAMES
ALIGN_DIMS = 6 + len(ALIGN_CATEGORIES) + len(ALIGN_COLOURS)
LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "token_sum_norm")  # rl.algorithms.losses.aggregate_loss
# rl.algorithms.correction.CORRECTIONS, kept here to stay torch-free
CORRECTIONS = ("none", "tis", "icepop", "seq_mask")
SYNC_TRANSPORTS = ("ray", "nccl", "ipc")  # rollout.weight_sync.TRANSPORTS, kept here to stay torch-free
ROUTABLE_FIELDS = tuple(name for name in FIELDS if name in REWARDS)  # output fields with both a span and a reward
MOVED_KEYS = {"reward.field_weights.rpc": "algo.rpc_weight"}  # a value with one home: the key to set instead
DATA_DEFAULTS = DataSettings()  # `pointrl synth`'s defaults, so that a trained policy reads what synth writes
CHECKS = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 2": lambda v: v >= 2,
    "0 or >= 2": lambda v: v == 0 or v >= 2,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in (0, 1)": lambda v: 0 < v < 1,
    "ray (nccl and ipc need GPUs and vLLM's weight-transfer API: not built yet)": lambda v: v == "ray",
    "empty or key=value": lambda v: v == "" or (v.count("=") == 1 and all(v.split("="))),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key path and the file or override it came from."""


def setting(default: Any, doc: str, check: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, the one-line doc `--help` prints, an optional range check (a key of CHECKS,
    applied to each element of a list or dict) and the allowed strings of an enum."""
    metadata = {"doc": doc, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)
