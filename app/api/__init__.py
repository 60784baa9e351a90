"""The Stripe-compatible read API (GET /v1/...): HTTP only; the queries live in app.query."""
