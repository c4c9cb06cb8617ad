"""Alembic revisions of the feedback store, one file each (Alembic loads them by path, not by import)."""
