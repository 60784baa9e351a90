"""The event inspector pages (app/inspect): in process, and in a real headless browser."""
