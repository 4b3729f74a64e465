"""Real datasets as `Sample`s: ShapeNetCore v2 meshes, ModelNet40 resampled clouds, Objaverse in PointLLM's format.

Every loader feeds its surface into `data3d.annotate`, so targets are computed from the geometry exactly as for
the benchmark, and the camera and image are synthesized by our renderer with DEFAULT_VIEW (the datasets' front
directions differ, so the azimuth is unrestricted); all three datasets are taken as y-up. Randomness for a file comes
from `default_rng([seed, crc32(uid)])`: a sample does not depend on which other files are present.
- ShapeNetCore v2: `<root>/<synset>/<model_id>/models/model_normalized.obj` read with trimesh; colours from its
  texture or material where trimesh can resolve them, else neutral grey. Question: category multiple choice.
- ModelNet40 (`modelnet40_normal_resampled`): `<root>/<class>/<class>_0001.txt`, rows "x,y,z,nx,ny,nz"; no colour,
  so neutral grey, Lambert-shaded with the file's normals. Question: category multiple choice.
- Objaverse / PointLLM: `<root>/<uid>_8192.npy` (8192, 6) xyz+rgb and a conversation JSON (a list of
  {"object_id", "conversations": [{"from": "human", "value": "<point>\\n..."}, {"from": "gpt", "value": ...}]}).
  rgb is taken as [0, 255] when any value exceeds 1 and divided by 255, else as [0, 1]. The first human turn (without
  the <point> placeholder) is the instruction, the first gpt turn the accepted answer and the description.
A missing or malformed file raises FileNotFoundError / ValueError naming it.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np

from data3d.annotate import NUM_KPTS, Surface, annotate, mesh_surface
from data3d.benchmark import POOL_FACTOR
from data3d.inventor import inventor_obj
from data3d.questions import category_question
from data3d.shapes import article
from data3d.sources import (
    MODELNET40_CLASSES,
    SHAPENET_SYNSETS,
    modelnet40_files,
    modelnet_uid,
    objaverse_file,
    objaverse_uid,
    shapenet_files,
    shapenet_uid,
)
from data3d.store import read_json
from data3d.types import Sample

GREY = (0.6, 0.6, 0.6)


def object_rng(seed: int, uid: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(uid.encode())])


def _sample(
    path: Path,
    uid: str,
    surface: Surface,
    rng: np.random.Generator,
    question: tuple,
    category: str,
    description: str,
    *,
    num_points: int,
    image_size: int,
    num_kpts: int = NUM_KPTS,
    pool_size: int | None = None,
) -> Sample:
    """The sample of one file's surface; a failure names the file."""
    try:
        geometry = annotate(
            surface, rng, num_points=num_points, image_size=image_size, num_kpts=num_kpts, pool_size=pool_size
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return geometry.sample(
        uid, question, category, description, {"source": uid.split("-", 1)[0], "view": geometry.view}
    )


def _category_sample(
    path: Path,
    uid: str,
    surface: Surface,
    rng: np.random.Generator,
    category: str,
    categories,
    **settings,
) -> Sample:
    """The sample of a file whose question is category multiple choice over `categories` (ShapeNet, ModelNet40),
    described as "a(n) <category>": the question draws from `rng` first, then `_sample` (which takes `settings`)."""
    question = category_question(category, categories, rng)
    return _sample(path, uid, surface, rng, question, category, f"{article(category)} {category}", **settings)


class FileSettings(TypedDict, total=False):
    """The keyword arguments of `shapenet_sample` and `modelnet_sample` that their iterators pass through; the
    defaults are those functions' own."""

    seed: int
    num_points: int
    image_size: int
    num_kpts: int


def _file_samples(paths, file_sample, settings: FileSettings) -> Iterator[Sample]:
    """`file_sample(path, **settings)` for each of `paths` in order: what the ShapeNet and ModelNet40 iterators yield."""
    for path in paths:
        yield file_sample(path, **settings)


def _face_rgb(mesh) -> np.ndarray:
    """(F, 3) colours in [0, 1] from a trimesh mesh's texture, material or colours; grey when it has none."""
    from trimesh.visual.color import uv_to_color  # trimesh is imported only where a mesh is read: it is slow to load

    visual, faces = mesh.visual, mesh.faces
    if visual.kind == "texture":
        material = visual.material
        image = getattr(material, "image", None)
        if image is None:
            image = getattr(material, "baseColorTexture", None)
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            return uv_to_color(visual.uv, image)[faces, :3].mean(axis=1) / 255.0
        return np.broadcast_to(np.asarray(material.main_color[:3], dtype=np.float64) / 255.0, (len(faces), 3))
    if visual.kind == "vertex":
        return np.asarray(visual.vertex_colors, dtype=np.float64)[faces, :3].mean(axis=1) / 255.0
    if visual.kind == "face":
        return np.asarray(visual.face_colors[:, :3], dtype=np.float64) / 255.0
    return np.broadcast_to(np.asarray(GREY), (len(faces), 3))


def read_mesh(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, face rgb) of every part of a mesh file, in the file's frame."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        if path.suffix.lower() == ".iv":  # Open Inventor: converted by Coin3D in the system Python (data3d.inventor)
            scene = trimesh.load(io.StringIO(inventor_obj(path)), file_type="obj", force="scene")
        else:
            scene = trimesh.load(path, force="scene")
        meshes = [m for m in scene.dump(concatenate=False) if isinstance(m, trimesh.Trimesh) and len(m.faces)]
    except ValueError as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: cannot read the mesh ({e})") from e
    except Exception as e:  # trimesh raises many exception types for broken files
        raise ValueError(f"{path}: cannot read the mesh ({type(e).__name__}: {e})") from e
    if not meshes:
        raise ValueError(f"{path}: the file holds no triangles")
    starts = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    vertices = np.concatenate([np.asarray(m.vertices, dtype=np.float64) for m in meshes])
    faces = np.concatenate([np.asarray(m.faces, dtype=np.int64) + s for m, s in zip(meshes, starts)])
    return vertices, faces, np.concatenate([_face_rgb(m) for m in meshes])


def mesh_file_surface(
    path, uid: str, seed: int, num_points: int, image_size: int
) -> tuple[Surface, np.random.Generator]:
    """The surface sampled from a mesh file's triangles, and the object's generator (`object_rng`) after it."""
    vertices, faces, face_rgb = read_mesh(path)
    rng = object_rng(seed, uid)
    try:
        return mesh_surface(vertices, faces, face_rgb, max(image_size**2, POOL_FACTOR * num_points), rng), rng
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def shapenet_sample(
    path,
    category: str,
    uid: str,
    *,
    seed: int = 0,
    num_points: int = 1024,
    image_size: int = 128,
    num_kpts: int = NUM_KPTS,
) -> Sample:
    """One ShapeNet model file as a sample."""
    surface, rng = mesh_file_surface(path, uid, seed, num_points, image_size)
    return _category_sample(
        path,
        uid,
        surface,
        rng,
        category,
        SHAPENET_SYNSETS.values(),
        num_points=num_points,
        image_size=image_size,
        num_kpts=num_kpts,
        pool_size=POOL_FACTOR * num_points,
    )


def shapenet_file_sample(path, **kwargs) -> Sample:
    """A model file in ShapeNetCore v2's layout as a sample: its synset folder names the category (`shapenet_sample`'s
    keyword arguments pass through)."""
    synset = Path(path).parts[-4]
    return shapenet_sample(path, SHAPENET_SYNSETS.get(synset, synset), shapenet_uid(path), **kwargs)


def iter_shapenet(
    root,
    *,
    synsets: list[str] | None = None,
    limit: int | None = None,
    **settings: Unpack[FileSettings],
) -> Iterator[Sample]:
    """ShapeNetCore v2 models under `root` in sorted order (optionally only some synsets, at most `limit`), each
    sampled with `settings` (`shapenet_sample`'s keyword arguments and defaults)."""
    yield from _file_samples(shapenet_files(root, synsets)[:limit], shapenet_file_sample, settings)


def read_modelnet_txt(path) -> np.ndarray:
    """(n, 6) x,y,z,nx,ny,nz rows of a ModelNet40 resampled file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not comma-separated numbers ({e})") from e
    if rows.shape[1] != 6 or len(rows) == 0 or not np.isfinite(rows).all():
        raise ValueError(f"{path}: expected rows of 6 finite numbers x,y,z,nx,ny,nz, got shape {rows.shape}")
    return rows


def modelnet_sample(
    path, *, seed: int = 0, num_points: int = 1024, image_size: int = 128, num_kpts: int = NUM_KPTS
) -> Sample:
    """One ModelNet40 resampled file as a sample; the class is the name before the last underscore."""
    path = Path(path)
    rows = read_modelnet_txt(path)
    cls = path.stem.rsplit("_", 1)[0]
    category, uid = cls.replace("_", " "), modelnet_uid(path)
    normals = rows[:, 3:] / np.maximum(np.linalg.norm(rows[:, 3:], axis=1, keepdims=True), 1e-12)
    surface = Surface(rows[:, :3], np.broadcast_to(np.asarray(GREY), (len(rows), 3)), normals)
    return _category_sample(
        path,
        uid,
        surface,
        object_rng(seed, uid),
        category,
        [c.replace("_", " ") for c in MODELNET40_CLASSES],
        num_points=num_points,
        image_size=image_size,
        num_kpts=num_kpts,
    )


def iter_modelnet40(
    root,
    *,
    split: str | None = None,
    limit: int | None = None,
    **settings: Unpack[FileSettings],
) -> Iterator[Sample]:
    """ModelNet40 files under `root`: those listed in `modelnet40_<split>.txt`, or every `<class>/*.txt` if no split
    (at most `limit`), each sampled with `settings` (`modelnet_sample`'s keyword arguments and defaults)."""
    yield from _file_samples(modelnet40_files(root, split)[:limit], modelnet_sample, settings)


def read_conversations(path) -> list[tuple[str, str, str]]:
    """(object_id, instruction, answer) from a PointLLM conversation JSON: the first human and gpt turns."""
    path = Path(path)
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of conversations, got {type(entries).__name__}")
    out = []
    for i, entry in enumerate(entries):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("object_id"), str) or not isinstance(turns, list):
            raise ValueError(f"{path}: entry {i} needs a string 'object_id' and a list 'conversations'")
        said = {}
        for turn in turns:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise ValueError(f"{path}: entry {i} has a turn without a string 'value'")
            said.setdefault(turn.get("from"), turn["value"])
        if "human" not in said or "gpt" not in said:
            raise ValueError(f"{path}: entry {i} ({entry['object_id']}) needs a 'human' and a 'gpt' turn")
        out.append((entry["object_id"], said["human"].replace("<point>", "").strip(), said["gpt"].strip()))
    return out


def read_pointllm_npy(path) -> tuple[np.ndarray, np.ndarray]:
    """(xyz, rgb in [0, 1]) of a PointLLM `<uid>_8192.npy` cloud."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        cloud = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a numpy array file ({e})") from e
    if cloud.ndim != 2 or cloud.shape[1] != 6 or not np.isfinite(cloud).all():
        raise ValueError(f"{path}: expected an (n, 6) finite xyz+rgb array, got shape {cloud.shape}")
    rgb = cloud[:, 3:].astype(np.float64)
    if rgb.min() < 0 or rgb.max() > 255:
        raise ValueError(f"{path}: rgb values must lie in [0, 1] or [0, 255], got [{rgb.min()}, {rgb.max()}]")
    return cloud[:, :3].astype(np.float64), rgb / 255.0 if rgb.max() > 1.0 else rgb


def objaverse_sample(
    root,
    object_id: str,
    instruction: str,
    answer: str,
    *,
    seed: int = 0,
    num_points: int = 1024,
    image_size: int = 128,
    num_kpts: int = NUM_KPTS,
) -> Sample:
    """One PointLLM conversation entry as a sample, its cloud read from `<root>/<object_id>_8192.npy`."""
    path = objaverse_file(root, object_id)
    xyz, rgb = read_pointllm_npy(path)
    uid = objaverse_uid(object_id)
    return _sample(
        path,
        uid,
        Surface(xyz, rgb),
        object_rng(seed, uid),
        ("open", instruction, [answer]),
        "",
        answer,
        num_points=num_points,
        image_size=image_size,
        num_kpts=num_kpts,
    )


def iter_objaverse(
    root,
    conversations,
    *,
    limit: int | None = None,
    seed: int = 0,
    num_points: int = 1024,
    image_size: int = 128,
    num_kpts: int = NUM_KPTS,
) -> Iterator[Sample]:
    """PointLLM Objaverse samples: one per conversation entry, its cloud read from `<root>/<uid>_8192.npy`."""
    settings = dict(seed=seed, num_points=num_points, image_size=image_size, num_kpts=num_kpts)
    for object_id, instruction, answer in read_conversations(conversations)[:limit]:
        yield objaverse_sample(root, object_id, instruction, answer, **settings)
