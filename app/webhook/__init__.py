"""The HTTP edge: the webhook endpoint, signature verification, error bodies and the health check."""
