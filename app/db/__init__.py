"""The database: engines, SQLite setup, the SQLModel tables and migrations."""
