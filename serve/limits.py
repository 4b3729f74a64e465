"""What the reward service is configured with, light enough for a command line to import: the limits of a request
(`ServiceLimits`) and its bearer token (`resolve_token`). `serve.app` builds the service from them; `pointrl
serve-rewards --help` and its usage errors need nothing more than this module (no FastAPI, numpy, torch or Ray)."""

from __future__ import annotations

import os
from dataclasses import dataclass

TOKEN_ENV = "POINTRL_REWARDS_TOKEN"


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry (larger bodies or batches get a 413 naming the limit), how many requests are decoded
    and scored at once (the rest wait their turn), and how long a request's headers, then its body, may take to
    arrive (then the connection is closed; for a body after a 408). The bounds on text are the contract's own
    (`rewards.request.MAX_TEXT_CHARS`, `MAX_REQUEST_CHARS`)."""

    max_body_bytes: int = 16 * 1024 * 1024  # 4096 samples with 1 KiB texts are ~9 MB of JSON
    max_samples: int = 4096
    max_concurrent: int = 2  # scoring holds the GIL: more threads add memory, not throughput
    body_timeout_s: float = 30.0  # 16 MiB at 0.5 MiB/s

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_samples", "max_concurrent", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"service limits: {name} must be positive, got {getattr(self, name)!r}")


def resolve_token(token: str | None) -> str | None:
    """`token`, else $POINTRL_REWARDS_TOKEN, else None (no auth). An empty one is a ValueError: it would silently turn
    auth off for an operator who meant to turn it on (an unset variable expanding to '')."""
    source = "--token"
    if token is None:
        token, source = os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}"
    if token is not None and not token.strip():
        raise ValueError(f"{source}: the bearer token is empty; give a non-empty token, or leave it unset for no auth")
    return token
