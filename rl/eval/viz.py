"""Pictures of a policy's answers on held-out objects (`pointrl viz`; its command line is `rl.cli.viz`). Per object
one PNG: the rendered image with the target and predicted 2D boxes, the predicted 3D box projected through the
sample's camera (what RPC scores, GRCA's Figure 3) and the 2D keypoints; beside it a 3D view of the cloud with the
target and predicted 3D boxes and keypoints.
The periodic evaluations during training log the same pictures to TensorBoard (`eval.pictures`).

    pointrl viz --policy DIR --data DIR [--split test] [--n 8] --out DIR
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data3d import Sample
from rewards import Quant
from rewards.camera import BOX_EDGES, box3d_corners, project
from rewards.score import dequantized_answer

# white-edged markers stay visible on an object of any colour
TARGET, PREDICTED, PROJECTED = "#2ca02c", "#d62728", "#1f77b4"


def predicted_geometry(text: str, sample: Sample, quant: Quant) -> dict[str, np.ndarray]:
    """The well-formed geometric fields of an answer, dequantized to the targets' units (pixels, object units)."""
    width, height = (sample.camera.width, sample.camera.height) if sample.camera else (1.0, 1.0)
    return dequantized_answer(text, width, height, quant)


def _box2d(axis, box: np.ndarray, colour: str, label: str) -> None:
    x1, y1, x2, y2 = box
    axis.plot([x1, x2, x2, x1, x1], [y1, y1, y2, y2, y1], color=colour, lw=1.5, label=label)


def draw(
    sample: Sample, text: str, quant: Quant, rewards: dict[str, float], out: Path | None = None
) -> np.ndarray | None:
    """One object's picture: the image side (left) and the cloud side (right). Written to `out` as a PNG, or without
    `out` returned as RGB pixels [H, W, 3] uint8 (what TensorBoard's add_image takes as HWC)."""
    import matplotlib

    matplotlib.use("Agg")  # files, no display
    import matplotlib.pyplot as plt

    predicted = predicted_geometry(text, sample, quant)
    fig = plt.figure(figsize=(10, 5))
    image = fig.add_subplot(1, 2, 1)
    if sample.image is not None:
        image.imshow(sample.image)
    if sample.camera is not None:
        image.set_xlim(0, sample.camera.width)
        image.set_ylim(sample.camera.height, 0)
    _box2d(image, sample.targets.bbox2d, TARGET, "target 2D box")
    if "bbox2d" in predicted:
        _box2d(image, predicted["bbox2d"], PREDICTED, "predicted 2D box")
    if "bbox3d" in predicted and sample.camera is not None:
        cam = sample.camera
        pixels, depth = project(box3d_corners(predicted["bbox3d"]), cam.K, cam.R, cam.t)
        for a, b in BOX_EDGES:
            if depth[a] > 0 and depth[b] > 0:
                image.plot(*zip(pixels[a], pixels[b]), color=PROJECTED, lw=1, ls="--")
        image.plot([], [], color=PROJECTED, ls="--", label="predicted 3D box, projected (RPC)")
    image.scatter(*sample.targets.kpts2d.T, c=TARGET, marker="o", s=40, edgecolors="white", label="target keypoints")
    if "kpts2d" in predicted:
        image.scatter(
            *predicted["kpts2d"].T, c=PREDICTED, marker="X", s=60, edgecolors="white", label="predicted keypoints"
        )
    image.legend(fontsize=7, loc="lower right")
    scores = "  ".join(f"{k} {v:.2f}" for k, v in rewards.items() if k in ("bbox2d", "bbox3d", "kpts2d", "rpc"))
    image.set_title(f"{sample.uid}: {scores}", fontsize=8)

    cloud = fig.add_subplot(1, 2, 2, projection="3d")
    xyz = sample.points[:, :3]
    step = max(1, len(xyz) // 2048)  # enough points to see the shape, few enough to draw fast
    cloud.scatter(*xyz[::step].T, c=np.clip(sample.points[::step, 3:6], 0, 1), s=2)
    for box, colour in ((sample.targets.bbox3d, TARGET), (predicted.get("bbox3d"), PREDICTED)):
        if box is not None:
            corners = box3d_corners(box)
            for a, b in BOX_EDGES:
                cloud.plot(*zip(corners[a], corners[b]), color=colour, lw=1)
    cloud.scatter(*sample.targets.kpts3d.T, c=TARGET, marker="o", s=30)
    if "kpts3d" in predicted:
        cloud.scatter(*predicted["kpts3d"].T, c=PREDICTED, marker="x", s=40)
    answer = f"answer {rewards.get('answer', 0):.0f}, bbox3d {rewards.get('bbox3d', 0):.2f}, kpts3d"
    cloud.set_title(f"{answer} {rewards.get('kpts3d', 0):.2f} (green: target, red: predicted)", fontsize=8)
    fig.tight_layout()
    pixels = None
    if out is not None:
        fig.savefig(out, dpi=100)
    else:
        fig.set_dpi(100)  # the file's resolution
        fig.canvas.draw()
        pixels = np.array(fig.canvas.buffer_rgba())[..., :3]  # [H, W, 3] uint8, a copy that outlives the figure
    plt.close(fig)
    return pixels


def pictures_to_draw(count: int) -> int:
    """`count`, or 0 with one warning line when matplotlib, a dev dependency only, is not installed: a run goes on
    without its pictures."""
    if count:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                f"warning: eval.pictures={count} but matplotlib is not installed: the periodic evaluations draw no "
                "pictures (pip install matplotlib, or set eval.pictures=0)",
                flush=True,
            )
            return 0
    return count


def drawn(samples: list[Sample], texts: list[str], quant: Quant) -> dict[str, np.ndarray]:
    """Each sample's picture of its answer as pixels [H, W, 3] uint8, by uid (the periodic evaluation's)."""
    from rl.eval.evaluate import score_texts

    results = score_texts(samples, texts, quant)
    return {s.uid: draw(s, text, quant, r["rewards"]) for s, text, r in zip(samples, texts, results)}


def visualize(policy_dir: str, data_dir: str, out_dir: str, split: str, n: int, max_new_tokens: int) -> list[Path]:
    """Greedy answers of the policy on the first `n` samples of the split, one PNG per object; returns the paths."""
    from rl.eval.evaluate import load_policy_and_split, policy_answerer, score_texts

    policy, samples, settings = load_policy_and_split(policy_dir, data_dir, split, n)
    quant = settings.quant()
    texts = policy_answerer(policy, max_new_tokens=max_new_tokens, quant=quant)(samples)
    results = score_texts(samples, texts, quant)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample, text, result in zip(samples, texts, results):
        path = out / f"{sample.uid}.png"
        draw(sample, text, quant, result["rewards"], path)
        paths.append(path)
    return paths
