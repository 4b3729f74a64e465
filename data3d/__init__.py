"""Samples for every stage: point clouds with an image, a calibrated camera and geometric targets, from the procedural
calibrated benchmark or from ShapeNetCore, ModelNet40 and Objaverse (PointLLM) files. It also fixes how a sample is
stored on disk and written as prompt and target text."""

from data3d.benchmark import VIEWS, generate_sample, write_benchmark
from data3d.loaders import iter_modelnet40, iter_objaverse, iter_shapenet, modelnet_sample, shapenet_sample
from data3d.serialize import prompt_text, reward_sample, target_fields, target_text
from data3d.shapes import CATEGORIES, build_shape
from data3d.store import BenchmarkDataset, read_meta, write_dataset
from data3d.types import Camera, Sample, Targets

__all__ = [
    "CATEGORIES",
    "VIEWS",
    "BenchmarkDataset",
    "Camera",
    "Sample",
    "Targets",
    "build_shape",
    "generate_sample",
    "iter_modelnet40",
    "iter_objaverse",
    "iter_shapenet",
    "modelnet_sample",
    "prompt_text",
    "read_meta",
    "reward_sample",
    "shapenet_sample",
    "target_fields",
    "target_text",
    "write_benchmark",
    "write_dataset",
]
