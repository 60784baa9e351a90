"""The read side of the mirror: one query module per resource, shared by the HTTP API and the CLI."""
