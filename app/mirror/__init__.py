"""The mirror: event envelopes, the handlers that turn Stripe objects into guarded writes, and the
compiled statements those writes run."""
