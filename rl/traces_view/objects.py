"""What a sample's page draws of its object: the point cloud (subsampled), the image, and the target and predicted
geometry, the 2D part in the image's pixels exactly as the reward service's debug view gets it (`"geometry": true`:
both 2D boxes, both 3D boxes projected through the camera, the predicted 2D keypoints), the 3D part in the cloud's
coordinates (the boxes and keypoints, the prediction de-quantized as it is scored)."""

from __future__ import annotations

import base64

import msgspec
import numpy as np

from data3d import Sample, reward_sample
from rewards import Quant, dequantize, score_request
from rewards.parse import parse_output
from rewards.request import convert_request

MAX_POINTS = 4096  # a page draws a cloud of this many points at most (an even stride through it)


def _predicted3d(text: str, quant: Quant) -> dict:
    """The answer's 3D box and keypoints in the cloud's coordinates (None for a field that did not parse)."""
    fields = parse_output(text).fields
    lo, hi = quant.lo_hi_3d()
    box = fields.get("bbox3d")
    kpts = fields.get("kpts3d")
    return {
        "bbox3d": dequantize(np.reshape(box[0], (2, 3)), lo, hi, quant.bins).reshape(6).tolist() if box else None,
        "kpts3d": dequantize(np.reshape(kpts[0], (-1, 3)), lo, hi, quant.bins).tolist() if kpts else None,
    }


def object_view(sample: Sample, text: str, quant: Quant) -> dict:
    """The object of `sample` and the answer `text` about it, as the page draws them."""
    request = convert_request([reward_sample(sample, text)], {"bins": quant.bins, "bounds3d": quant.bounds3d})
    (scored,) = score_request(msgspec.structs.replace(request, geometry=True))
    stride = max(1, len(sample.points) // MAX_POINTS)
    image = None
    if sample.image is not None:
        height, width, _ = sample.image.shape
        rgb = base64.b64encode(np.ascontiguousarray(sample.image, dtype=np.uint8).tobytes()).decode()
        image = {"width": width, "height": height, "rgb": rgb}
    t = sample.targets
    return {
        "uid": sample.uid,
        "points": np.round(sample.points[::stride], 4).tolist(),  # xyz + rgb in [0, 1]
        "image": image,
        "geometry": scored["geometry"],
        "target3d": {"bbox3d": t.bbox3d.tolist(), "kpts3d": t.kpts3d.tolist()},
        "predicted3d": _predicted3d(text, quant),
    }
