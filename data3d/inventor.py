"""Open Inventor (.iv) files as OBJ text for trimesh: Coin3D's binding pivy is a Debian package (python3-pivy) of the
system Python, so the conversion runs there, in a subprocess (`inventor_to_obj.py`), and a missing pivy or a broken
file is one line naming the file and the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
CONVERTER = Path(__file__).with_name("inventor_to_obj.py")
TIMEOUT_S = 120


def inventor_obj(path) -> str:
    """The triangles of the Inventor file at `path` as OBJ text, or a ValueError naming the file."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, str(CONVERTER), str(path)], capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except FileNotFoundError:
        raise ValueError(f"{path}: an Inventor file needs {SYSTEM_PYTHON} with pivy (apt install python3-pivy)")
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: the Inventor conversion took over {TIMEOUT_S} s")
    if "No module named 'pivy'" in done.stderr:
        raise ValueError(f"{path}: an Inventor file needs pivy for {SYSTEM_PYTHON} (apt install python3-pivy)")
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise ValueError(lines[-1] if lines else f"{path}: the Inventor conversion failed ({done.returncode})")
    return done.stdout
