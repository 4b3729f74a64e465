"""The traces viewer as a FastAPI app: the pages (`/`, `/sample/{id}`, `/compare`) and the JSON API they read, which a
script can call too. Every `/api/*` route takes `run` (the index of a run directory given to `pointrl traces`,
default 0) and, when the viewer has a token, wants the reward service's bearer header (`serve.app.check_token`); the
pages hold no data and send the token they were opened with (`?token=`)."""

from __future__ import annotations

from functools import reduce
from importlib import resources
from pathlib import Path

import msgspec
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from rewards.schema import FIELDS, REWARDS
from rl.runtime.traces import TraceRun
from serve.app import check_token

PAGES = {"/": "index.html", "/compare": "compare.html"}
STATIC = {"view.js": "text/javascript", "vendor/three.min.js": "text/javascript"}


class ViewedRun:
    """One run directory's traces, and (loaded on first use) its config and prompts, for the objects."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.traces = TraceRun(path)
        self.splits: dict[str, object] = {}

    def sample_object(self, kind: str, index: int):
        """The traced object: the `index`-th of the run's training split or held-out objects."""
        from rl.config import run_quant
        from rl.runtime.data import held_out_set, training_prompts

        if not self.splits:
            cfg = self.traces.config()
            self.quant = run_quant(cfg)
            self.splits = {"train": training_prompts(cfg), "eval": held_out_set(cfg)}
        return self.splits[kind][index]


def create_app(runs: list[str | Path], token: str | None = None) -> FastAPI:
    """The viewer of `runs` (run directories with traces/); `token`: the bearer token every `/api/*` call needs."""
    import pyarrow.compute as pc

    viewed = [ViewedRun(path) for path in runs]
    for shown in viewed:
        shown.traces.summaries()  # read at start: the first listing a user asks for is already in memory
    app = FastAPI(title="pointrl traces", description="What a run trained on: rollouts, field rewards, token credit.")

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=422)

    def run_of(request: Request, run: int) -> ViewedRun:
        check_token(request, token)
        if not 0 <= run < len(viewed):
            raise HTTPException(404, f"run: {run} is not one of the {len(viewed)} runs shown (0 to {len(viewed) - 1})")
        return viewed[run]

    for route, page in PAGES.items():
        app.add_api_route(route, _page(page), response_class=HTMLResponse, include_in_schema=False)
    app.add_api_route("/sample/{sample_id}", _page("sample.html"), response_class=HTMLResponse, include_in_schema=False)
    for name, media in STATIC.items():
        app.add_api_route(f"/static/{name}", _static(name, media), include_in_schema=False)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok", "runs": len(viewed)}

    @app.get("/api/runs", summary="The runs shown, in the order given")
    def list_runs(request: Request) -> list[dict]:
        check_token(request, token)
        return [{"run": k, "path": str(v.path), "samples": v.traces.summaries().num_rows} for k, v in enumerate(viewed)]

    @app.get("/api/steps", summary="Each traced step: its samples and mean field rewards")
    def steps(request: Request, run: int = 0) -> list[dict]:
        table = run_of(request, run).traces.summaries()
        if table.num_rows == 0:
            return []
        rewards = [f"reward_{name}" for name in REWARDS]
        grouped = table.group_by(["kind", "step"]).aggregate(
            [("sample_id", "count"), ("missing", "sum"), *[(name, "mean") for name in rewards]]
        )
        rows = grouped.sort_by([("step", "ascending"), ("kind", "descending")]).to_pylist()
        return [
            {
                "step": row["step"],
                "kind": row["kind"],
                "samples": row["sample_id_count"],
                "missing": row["missing_sum"],
                "rewards": {name: row[f"reward_{name}_mean"] for name in REWARDS},
            }
            for row in rows
        ]

    @app.get("/api/samples", summary="The traced samples, filtered")
    def samples(
        request: Request,
        run: int = 0,
        step: int | None = None,
        kind: str | None = None,
        field: str | None = None,
        min: float | None = None,
        max: float | None = None,
        failed: str | None = None,
        uid: str | None = None,
    ) -> Response:
        """`step`, `kind` (train or eval) and `uid` (the object) select; `field` with `min` / `max` bounds that
        field's reward; `failed` keeps the samples where that field (or `any` field) did not parse."""
        table = run_of(request, run).traces.summaries()
        keep = []  # the conditions, all of which a listed sample meets
        for name, value in (("step", step), ("kind", kind), ("uid", uid)):
            if value is not None:
                keep.append(pc.equal(table[name], value))
        if field is not None or min is not None or max is not None:
            if field not in REWARDS:
                raise HTTPException(422, f"field: a reward range needs field, one of {', '.join(REWARDS)}")
            if min is not None:
                keep.append(pc.greater_equal(table[f"reward_{field}"], min))
            if max is not None:
                keep.append(pc.less_equal(table[f"reward_{field}"], max))
        if failed is not None:
            if failed != "any" and failed not in FIELDS:
                raise HTTPException(422, f"failed: expected any or one of {', '.join(FIELDS)}, got {failed!r}")
            names = FIELDS if failed == "any" else [failed]
            keep.append(reduce(pc.or_, [table[f"invalid_{name}"] for name in names]))
        listed = (table.filter(reduce(pc.and_, keep)) if keep else table).to_pylist()
        return Response(msgspec.json.encode(listed), media_type="application/json")  # 10,000 rows: no pydantic pass

    @app.get("/api/sample/{sample_id}", summary="One sample: tokens, fields, advantages, spans, rewards, log-probs")
    def sample(request: Request, sample_id: str, run: int = 0) -> dict:
        row = _row(run_of(request, run), sample_id)
        text = row["response"]
        return {
            **{key: row[key] for key in ("sample_id", "kind", "step", "row", "group", "group_size", "algo", "uid")},
            **{key: row[key] for key in ("dataset", "prompt", "response", "version", "staleness", "missing", "errors")},
            "tokens": [text[a:b] for a, b in zip(row["token_start"], row["token_end"])],
            "token_ids": row["token_ids"],
            "token_ranges": [list(pair) for pair in zip(row["token_start"], row["token_end"])],
            "token_fields": row["token_field"],
            "advantages": row["advantages"],
            "spans": {name: row[f"span_{name}"] for name in FIELDS},
            "invalid": {name: row[f"invalid_{name}"] for name in FIELDS},
            "rewards": {name: row[f"reward_{name}"] for name in REWARDS},
            "logprobs": {
                "rollout": row["rollout_logprobs"],
                "learner": row["learner_logprobs"],
                "learner_from": row["learner_logprobs_from"],
            },
            "importance_weights": row["importance_weights"],
        }

    @app.get("/api/object/{sample_id}", summary="A sample's object and both answers' geometry, to draw")
    def sample_object(request: Request, sample_id: str, run: int = 0) -> dict:
        from rl.traces_view.objects import object_view

        shown = run_of(request, run)
        row = _row(shown, sample_id)
        return object_view(shown.sample_object(row["kind"], row["index"]), row["response"], shown.quant)

    return app


def _row(run: ViewedRun, sample_id: str) -> dict:
    try:
        return run.traces.sample(sample_id)
    except KeyError as exc:
        raise HTTPException(404, exc.args[0]) from None


def _page(name: str):
    def page() -> str:
        return resources.files("rl.traces_view").joinpath(name).read_text()

    return page


def _static(name: str, media: str):
    def static() -> Response:
        return Response(resources.files("rl.traces_view").joinpath(name).read_bytes(), media_type=media)

    return static
