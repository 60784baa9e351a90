"""What became of one delivered event. Its own module so the SQLite writer process imports nothing else."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"  # every row it touched already held a newer version
    IGNORED = "ignored"  # an event type the mirror does not keep
    FAILED = "failed"
    # Never in stripe_events: a delivery that is not an event the mirror can store (not JSON, not an
    # envelope, a value no column holds), kept byte for byte in dead_letters with the reason.
    REFUSED = "refused"
