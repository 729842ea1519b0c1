"""Helpers shared by the tests of every app (import them from here, not from conftest.py)."""
