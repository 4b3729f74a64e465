"""The reward service: the `rewards` contract over HTTP (FastAPI under uvicorn) and as a Ray Serve deployment.

One implementation, `rewards.score_request`, answers all three entry points; this package adds transport, limits,
auth and a visual debug view.
"""
