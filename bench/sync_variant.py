"""`billing-mirror` with one change to the sync's client-side rate limiter, for an experiment of
bench/sync_backfill.py (``--limiter-buffer-ms``); never the code as it stands.

    python -m bench.sync_variant BUFFER_MS sync items --api-base ... (any billing-mirror arguments)

app.sync.fetch builds its limiters (``_limiter``) with ``buffer_ms`` = LIMITER_BUFFER_MS: every wait
for a slot sleeps that much longer than the limiter asked. This runs the command with ``buffer_ms``
set to BUFFER_MS on every limiter the sync builds (50 is pyrate-limiter's default), to show what the
choice costs.
"""

from __future__ import annotations

import sys
from typing import Any


def patch_limiter(buffer_ms: int) -> None:
    """Every limiter app.sync.fetch builds from now on waits ``buffer_ms`` beyond what it must."""
    import app.sync.fetch as fetch

    original = getattr(fetch, "_limiter", None)
    if original is None:
        raise SystemExit("app.sync.fetch._limiter is gone: this experiment needs updating")

    def limiter(max_rps: float) -> Any:
        built = original(max_rps)
        built.buffer_ms = buffer_ms
        return built

    fetch._limiter = limiter


def main() -> None:
    buffer_ms = int(sys.argv[1])
    patch_limiter(buffer_ms)
    from app.cli.main import main as billing_mirror

    sys.argv = ["billing-mirror", *sys.argv[2:]]
    billing_mirror()


if __name__ == "__main__":
    main()
