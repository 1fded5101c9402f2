"""Puts tests/ on the import path, so that every test imports the shared helpers as `import _toolkit`."""
