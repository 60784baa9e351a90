"""The read side of the mirror: one query module per resource, shared by the HTTP API and the CLI.

To publish another resource (both ``GET /v1/...`` endpoints and a CLI group come from the same parts):
1. write ``app/read/resources/<resource>.py`` with a filter schema (``params`` specs), a
   ``list_page(connection, ListRequest) -> Page`` that turns filters into SQL conditions and calls
   ``pagination.fetch_page``, a ``retrieve(connection, id) -> str | None`` returning the stored
   payload, and a ``RESOURCE``;
2. add it to ``registry.RESOURCES`` (the HTTP routes follow);
3. for the terminal, add a ``build_group(...)`` line with table columns in ``app/cli/read.py``.
Give every filter an index that starts with the filtered column(s) and ends with (timestamp, id).
"""
