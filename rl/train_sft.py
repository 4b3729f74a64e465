"""Supervised fine-tuning on the serialized targets (the warm-up the RL scripts run when no policy is given).

python rl/train_sft.py [--config PATH] [section.key=value ...]      (local Ray)
ray job submit --working-dir . -- python rl/train_sft.py [...]     (a running cluster)
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout's packages, when run as a script
from rl.runtime.driver import main  # noqa: E402

main("sft.yaml")
