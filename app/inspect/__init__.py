"""The event inspector: server-rendered HTML pages under /inspect (recent events, one object's history,
failed events and their retry, dead letters, counts, lag and sync state), opened by the read API keys."""
