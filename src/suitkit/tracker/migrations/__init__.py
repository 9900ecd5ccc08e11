"""Alembic migrations of the status tracker's database (run by ``tracker.store.open_store``).

``env.py`` is Alembic's environment script; ``versions/`` holds one hand-written revision per
schema change. See docs/tracker.md, "Databases and migrations".
"""

from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
"""The ``script_location`` to give Alembic (this directory, inside the installed package)."""
