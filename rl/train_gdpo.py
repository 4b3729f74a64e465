"""GDPO: each reward standardized within its group, the weighted sum normalized over the batch and broadcast.

python rl/train_gdpo.py [--config PATH] [section.key=value ...]      (local Ray)
ray job submit --working-dir . -- python rl/train_gdpo.py [...]     (a running cluster)
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout's packages, when run as a script
from rl.runtime.driver import main  # noqa: E402

main("gdpo.yaml")
