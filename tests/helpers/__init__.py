"""Code shared by several test files (tests/ is on pytest's pythonpath)."""
