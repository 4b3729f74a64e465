"""The debug view's picture: `"geometry": true` returns what it draws (projected by `rewards.camera`, de-quantized as
scored), checked against the camera math on a real server; then headless Chromium loads `GET /`, clicks through the
bundled example, and the page must draw exactly that geometry on an SVG of the camera's size beside the text."""

import json
import math
import shutil
from importlib import resources

import httpx
import msgspec
import numpy as np
import pytest

from rewards.camera import BOX_EDGES, MIN_DEPTH, box3d_corners, project
from rewards.request import RewardResponse
from serve.server import running_server
from tests.chromium import Chromium

EXAMPLE = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
WITH_GEOMETRY = {**EXAMPLE, "geometry": True}


@pytest.fixture(scope="module")
def url():
    with running_server() as base:
        yield base


@pytest.fixture(scope="module")
def results(url) -> list[dict]:
    response = httpx.post(f"{url}/v1/rewards", json=WITH_GEOMETRY)
    assert response.status_code == 200, response.text
    msgspec.convert(response.json(), RewardResponse)  # the response is what the OpenAPI schema says
    return response.json()["results"]


@pytest.fixture(scope="module")
def geometry(results) -> list[dict]:
    return [result["geometry"] for result in results]


def test_geometry_is_opt_in_and_changes_nothing_else(url, geometry):
    plain = httpx.post(f"{url}/v1/rewards", json=EXAMPLE)
    assert httpx.post(f"{url}/v1/rewards", json={**EXAMPLE, "geometry": False}).content == plain.content
    assert all("geometry" not in result for result in plain.json()["results"])
    with_geometry = httpx.post(f"{url}/v1/rewards", json=WITH_GEOMETRY).json()["results"]
    assert [{k: v for k, v in r.items() if k != "geometry"} for r in with_geometry] == plain.json()["results"]


def same(got, expected) -> bool:
    """Nested lists of coordinates equal up to float rounding, with None (a corner behind the camera) in the same places."""
    if got is None or expected is None:
        return got is expected
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(same, got, expected))
    return math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-9)


def expected_corners(box3d: list[float], camera: dict) -> list[list[float] | None]:
    pixels, depth = project(box3d_corners(np.array(box3d)), *(np.array(camera[k], float) for k in ("K", "R", "t")))
    return [p if d > MIN_DEPTH else None for p, d in zip(pixels.tolist(), depth.tolist())]


def test_geometry_is_the_camera_projection_of_the_boxes_as_scored(geometry):
    bins = EXAMPLE["quant"]["bins"]
    for sample, drawn in zip(EXAMPLE["samples"], geometry):
        camera, target = sample["camera"], sample["target"]
        assert (drawn["width"], drawn["height"]) == (camera["width"], camera["height"])
        assert drawn["box3d_edges"] == [list(edge) for edge in BOX_EDGES]
        assert drawn["target"]["bbox2d"] == target["bbox2d"]
        assert same(drawn["target"]["bbox3d"], expected_corners(target["bbox3d"], camera))
        if drawn["predicted"]["bbox3d"] is None:  # the example's truncated answer: nothing parsed, nothing drawn
            assert drawn["predicted"] == {"bbox2d": None, "bbox3d": None, "kpts2d": None}
            continue
        answer = json.loads(sample["text"].strip("`json\n"))  # the others are bare or in a ```json fence
        scale2d = np.tile([camera["width"], camera["height"]], 2) / (bins - 1)  # v = lo + q (hi - lo) / (bins - 1)
        assert same(drawn["predicted"]["bbox2d"], (np.array(answer["bbox2d"]) * scale2d).tolist())
        assert same(drawn["predicted"]["kpts2d"], (np.array(answer["kpts2d"]) * scale2d[:2]).tolist())
        box3d = -1 + np.array(answer["bbox3d"]) * 2 / (bins - 1)  # bounds3d [-1, 1]^3
        assert same(drawn["predicted"]["bbox3d"], expected_corners(box3d.tolist(), camera))
    assert None in geometry[3]["predicted"]["bbox3d"]  # the example has a box reaching behind its camera


@pytest.mark.parametrize(
    "flag, detail", [("yes", "geometry: Expected `bool`, got `str`"), (1, "geometry: Expected `bool`, got `int`")]
)
def test_a_bad_geometry_flag_is_one_422_line(url, flag, detail):
    response = httpx.post(f"{url}/v1/rewards", json={**EXAMPLE, "geometry": flag})
    assert response.status_code == 422 and response.json() == {"detail": detail}


def test_the_openapi_schema_documents_the_geometry(url):
    schemas = httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]
    assert schemas["RewardRequest"]["properties"]["geometry"]["type"] == "boolean"
    assert "geometry" not in schemas["RewardResult"]["required"]
    assert {"SampleGeometry", "TargetGeometry", "PredictedGeometry"} <= set(schemas)


# What the page shows, read from its DOM and layout: per sample the SVG's size and every shape's coordinates.
DRAWN = """Array.from(document.querySelectorAll("#out .sample")).map(sample => {
  const svg = sample.querySelector("svg.picture"), text = sample.querySelector(".text");
  const all = (selector, read) => Array.from(svg.querySelectorAll(selector)).map(read);
  return {
    viewBox: svg.getAttribute("viewBox"), shown: [svg.getBoundingClientRect().width, svg.getBoundingClientRect().height],
    beside: svg.getBoundingClientRect().left >= text.getBoundingClientRect().right,
    highlighted: text.querySelectorAll("span").length, legend: sample.querySelector("figcaption").textContent,
    boxes: all("polygon", p => [p.getAttribute("class"), p.getAttribute("points")]),
    edges: all("line", l => [l.getAttribute("class"), ["x1", "y1", "x2", "y2"].map(a => +l.getAttribute(a))]),
    keypoints: all("circle", c => [+c.getAttribute("cx"), +c.getAttribute("cy")]),
  };
})"""


def expected_drawing(geometry: dict) -> tuple[list, list]:
    """The 2D boxes (class, [x, y] x 4) and the 3D box edges (class, [x1, y1, x2, y2]) the page must draw."""
    boxes, edges = [], []
    for who in ("target", "predicted"):
        corners = geometry[who]["bbox3d"] or []
        for a, b in geometry["box3d_edges"]:
            if corners and corners[a] is not None and corners[b] is not None:
                edges.append((f"bbox3d {who}", corners[a] + corners[b]))
        if (box := geometry[who]["bbox2d"]) is not None:
            x1, y1, x2, y2 = box
            boxes.append((f"bbox2d {who}", [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
    return boxes, edges


def test_the_debug_view_draws_the_api_geometry_in_headless_chromium(url, results, tmp_path):
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`)")
    browser = Chromium(binary, str(tmp_path / "profile"))
    try:
        browser.open(f"{url}/")
        browser.click("#load")
        browser.wait_for("document.getElementById('req').value.includes('samples')")
        browser.click("#go")
        browser.wait_for("document.getElementById('status').textContent !== ''")
        status = browser.evaluate("document.getElementById('status').textContent")
        drawn = browser.evaluate(DRAWN)
        errors = [event for event in browser.events if event.get("method") == "Runtime.exceptionThrown"]
    finally:
        browser.close()
    assert status == f"scored {len(EXAMPLE['samples'])} samples" and not errors
    assert len(drawn) == len(results)
    for page, result in zip(drawn, results):
        api = result["geometry"]
        width, height = api["width"], api["height"]
        assert page["viewBox"] == f"0 0 {width:g} {height:g}"  # drawn in the camera's pixels ...
        assert page["shown"][0] / width == page["shown"][1] / height >= 1  # ... magnified, never distorted
        assert page["beside"] and "predicted keypoints" in page["legend"]
        assert page["highlighted"] == sum(span is not None for span in result["spans"].values())
        boxes, edges = expected_drawing(api)
        assert [cls for cls, _ in page["boxes"]] == [cls for cls, _ in boxes]
        for (_, points), (_, corners) in zip(page["boxes"], boxes):
            assert same([[float(v) for v in p.split(",")] for p in points.split()], corners)
        assert [cls for cls, _ in page["edges"]] == [cls for cls, _ in edges]
        assert same([xy for _, xy in page["edges"]], [xy for _, xy in edges])
        assert same(page["keypoints"], api["predicted"]["kpts2d"] or [])
    assert len(drawn[3]["edges"]) < 2 * len(BOX_EDGES)  # edges to a corner behind the camera are left out
