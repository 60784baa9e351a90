"""Sync with Stripe's API: list pages fetched with the official ``stripe`` package, under a client-side
rate limit, with back-off on rate limits and outages (the fetch layer of backfill, catch-up and
reconcile)."""
