"""Shared pytest configuration. Helpers live in tests/helpers.py (on the pytest pythonpath)."""
