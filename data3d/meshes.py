"""Any folder of meshes as benchmark objects (`pointrl import --meshes ROOT`): every file under ROOT that trimesh
reads (MESH_SUFFIXES), rendered, sampled and annotated exactly as ShapeNet's models are (`data3d.annotate`), so that
every reward applies to real shapes.

Labels come from the folder names (`--labels folders`, the default): a file's top folder under ROOT is its category
("vehicles/car.obj" is a vehicles), its question the category multiple choice over the root's folder names (with
ShapeNet's names as distractors where the root has too few). A file directly in ROOT, or any file with `--labels
none`, is "an object" asked a question its own geometry answers: which axis is longest, or, when two are too close to
call, whether it is taller than it is wide.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from data3d.annotate import NUM_KPTS, annotate
from data3d.benchmark import POOL_FACTOR
from data3d.loaders import mesh_file_surface
from data3d.questions import category_question, extents, longest_axis_question, taller_question
from data3d.shapes import article
from data3d.sources import SHAPENET_SYNSETS
from data3d.types import Sample

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf", ".iv")  # .iv: Open Inventor (data3d.inventor)
MESHES_LAYOUT = f"<category folder>/<name>{{{','.join(MESH_SUFFIXES)}}} (or files directly in the root, unlabelled)"
LABELS = ("folders", "none")
UNLABELLED = "object"


def mesh_files(root) -> list[Path]:
    """The mesh files under `root` (any depth) in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mesh root {root} is not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())


def mesh_label(root, path, labels: str = "folders") -> str:
    """The category of `path`: its top folder under `root` with `labels=folders`, else UNLABELLED."""
    parts = Path(path).relative_to(root).parts
    return parts[0].replace("_", " ").lower() if labels == "folders" and len(parts) > 1 else UNLABELLED


def mesh_uid(root, path) -> str:
    """`mesh-` and the path under `root` without its suffix, every run of other characters made one `_`."""
    relative = Path(path).relative_to(root).with_suffix("").as_posix()
    return "mesh-" + re.sub(r"[^A-Za-z0-9.-]+", "_", relative)


def shape_question(bbox3d: np.ndarray):
    """A question the box answers: the longest axis, else whether it is taller than wide (decided by the larger of
    height and width when even that is too close for `taller_question`'s margin)."""
    question = longest_axis_question(bbox3d) or taller_question(bbox3d)
    if question is None:
        width, height, _ = extents(bbox3d)
        question = ("taller", "Is this object taller than it is wide?", ["yes" if height > width else "no"])
    return question


def mesh_sample(
    path,
    uid: str,
    category: str,
    categories: list[str],
    *,
    seed: int = 0,
    num_points: int = 1024,
    image_size: int = 128,
    num_kpts: int = NUM_KPTS,
) -> Sample:
    """One mesh file as a sample; `categories` are the root's labels (the category question's choices)."""
    surface, rng = mesh_file_surface(path, uid, seed, num_points, image_size)
    try:
        labelled = category != UNLABELLED
        choices = sorted(set(categories) | set(SHAPENET_SYNSETS.values())) if labelled else []
        question = category_question(category, choices, rng) if labelled else None
        geometry = annotate(
            surface,
            rng,
            num_points=num_points,
            image_size=image_size,
            num_kpts=num_kpts,
            pool_size=POOL_FACTOR * num_points,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    question = question or shape_question(geometry.bbox3d)
    return geometry.sample(
        uid, question, category, f"{article(category)} {category}", {"source": "mesh", "view": geometry.view}
    )
