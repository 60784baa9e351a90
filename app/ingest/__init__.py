"""Ingest: plan events, store and apply them in one transaction per batch, group commit, and the
SQLite writer child with its protocol."""
