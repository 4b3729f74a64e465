"""Routed GRPO (GRCA): per-field rewards on their own tokens, RPC-shaped background. Without policy.init it first runs the SFT warm-up (GRCA Stage 1).

python rl/train_grca.py [--config PATH] [section.key=value ...]      (local Ray)
ray job submit --working-dir . -- python rl/train_grca.py [...]     (a running cluster)
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout's packages, when run as a script
from rl.runtime.driver import main  # noqa: E402

main("grca.yaml")
