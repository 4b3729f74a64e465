"""Which objects a real dataset root holds, in a fixed (sorted) order, and the uid each one's sample gets.

Kept apart from `data3d.loaders` (which reads the files) so that `pointrl import` can list a root, split it and find
where an interrupted import stopped without reading a single mesh, through the very functions the loaders iterate.
"""

from __future__ import annotations

from pathlib import Path

SHAPENET_LAYOUT = "<synset>/<model_id>/models/model_normalized.obj"
MODELNET40_LAYOUT = "<class>/<class>_0001.txt with rows x,y,z,nx,ny,nz (modelnet40_normal_resampled)"


def shapenet_files(root, synsets: list[str] | None = None) -> list[Path]:
    """ShapeNetCore v2 model files under `root` in sorted order, optionally only those of some synsets."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ShapeNetCore root {root} is not a directory")
    paths = sorted(root.glob("*/*/models/model_normalized.obj"))
    if synsets is not None:
        wanted = set(synsets)
        paths = [p for p in paths if p.parts[-4] in wanted]
    return paths


def shapenet_uid(path) -> str:
    parts = Path(path).parts
    return f"shapenet-{parts[-4]}-{parts[-3]}"


def modelnet40_files(root, split: str | None = None) -> list[Path]:
    """ModelNet40 files under `root`: those listed in `modelnet40_<split>.txt`, or every `<class>/*.txt` if no split."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ModelNet40 root {root} is not a directory")
    if split is None:
        return sorted(p for p in root.glob("*/*.txt") if p.parent.name == p.stem.rsplit("_", 1)[0])
    listing = root / f"modelnet40_{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found (the split file of split {split!r})")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return [root / name.rsplit("_", 1)[0] / f"{name}.txt" for name in names]


def modelnet_uid(path) -> str:
    return f"modelnet40-{Path(path).stem}"


def objaverse_uid(object_id: str) -> str:
    return f"objaverse-{object_id}"


def objaverse_file(root, object_id: str) -> Path:
    """Where PointLLM keeps an object's cloud."""
    return Path(root) / f"{object_id}_8192.npy"
