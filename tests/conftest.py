"""Shared pytest configuration. Helpers live in tests/helpers.py (on the pytest pythonpath)."""

from pg import postgres  # noqa: F401 - the session's throwaway PostgreSQL (tests/pg.py)
