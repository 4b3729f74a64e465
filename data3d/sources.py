"""Which objects a real dataset root holds, in a fixed (sorted) order, the uid each one's sample gets, and the
category names of the ShapeNet synsets and ModelNet40 classes.

Kept apart from `data3d.loaders` (which reads the files) so that `pointrl import` can list a root, split it and find
where an interrupted import stopped without reading a single mesh, through the very functions the loaders iterate.
"""

from __future__ import annotations

from pathlib import Path

SHAPENET_LAYOUT = "<synset>/<model_id>/models/model_normalized.obj"
MODELNET40_LAYOUT = "<class>/<class>_0001.txt with rows x,y,z,nx,ny,nz (modelnet40_normal_resampled)"
# the category names of the synsets and classes (the folders)
SHAPENET_SYNSETS: dict[str, str] = {
    "02691156": "airplane",
    "02747177": "trash bin",
    "02773838": "bag",
    "02801938": "basket",
    "02808440": "bathtub",
    "02818832": "bed",
    "02828884": "bench",
    "02843684": "birdhouse",
    "02871439": "bookshelf",
    "02876657": "bottle",
    "02880940": "bowl",
    "02924116": "bus",
    "02933112": "cabinet",
    "02942699": "camera",
    "02946921": "can",
    "02954340": "cap",
    "02958343": "car",
    "02992529": "cellphone",
    "03001627": "chair",
    "03046257": "clock",
    "03085013": "keyboard",
    "03207941": "dishwasher",
    "03211117": "monitor",
    "03261776": "earphone",
    "03325088": "faucet",
    "03337140": "file cabinet",
    "03467517": "guitar",
    "03513137": "helmet",
    "03593526": "jar",
    "03624134": "knife",
    "03636649": "lamp",
    "03642806": "laptop",
    "03691459": "loudspeaker",
    "03710193": "mailbox",
    "03759954": "microphone",
    "03761084": "microwave",
    "03790512": "motorbike",
    "03797390": "mug",
    "03928116": "piano",
    "03938244": "pillow",
    "03948459": "pistol",
    "03991062": "flowerpot",
    "04004475": "printer",
    "04074963": "remote control",
    "04090263": "rifle",
    "04099429": "rocket",
    "04225987": "skateboard",
    "04256520": "sofa",
    "04330267": "stove",
    "04379243": "table",
    "04401088": "telephone",
    "04460130": "tower",
    "04468005": "train",
    "04530566": "watercraft",
    "04554684": "washer",
}
MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane",
    "bathtub",
    "bed",
    "bench",
    "bookshelf",
    "bottle",
    "bowl",
    "car",
    "chair",
    "cone",
    "cup",
    "curtain",
    "desk",
    "door",
    "dresser",
    "flower_pot",
    "glass_box",
    "guitar",
    "keyboard",
    "lamp",
    "laptop",
    "mantel",
    "monitor",
    "night_stand",
    "person",
    "piano",
    "plant",
    "radio",
    "range_hood",
    "sink",
    "sofa",
    "stairs",
    "stool",
    "table",
    "tent",
    "toilet",
    "tv_stand",
    "vase",
    "wardrobe",
    "xbox",
)


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
