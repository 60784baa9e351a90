"""Alembic migrations of the mirror, shipped in the package as ``app.migrations``."""
