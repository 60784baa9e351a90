"""Handlers: each takes a Stripe object and plans guarded writes (app.mirror.writes); none touches the
database. app.mirror.dispatch maps event types to them."""
