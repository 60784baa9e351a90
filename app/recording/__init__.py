"""Recordings: event files, replay, the stored-event log (export, list, retry) and backfills."""
