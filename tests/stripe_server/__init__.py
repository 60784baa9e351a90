"""A Stripe-compatible API server for tests: list and retrieve endpoints of the Billing resources the sync
client reads, Stripe's list contract, errors, rate limits and injected faults, served over real HTTP."""
