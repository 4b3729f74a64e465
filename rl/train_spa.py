"""SPA: reference-free preference between the clean point cloud and a 3D-masked one, with an NLL anchor.

python rl/train_spa.py [--config PATH] [section.key=value ...]      (local Ray)
ray job submit --working-dir . -- python rl/train_spa.py [...]     (a running cluster)
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout's packages, when run as a script
from rl.runtime.driver import main  # noqa: E402

main("spa.yaml")
