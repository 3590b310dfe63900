"""Command lines of alvts (entry points in pyproject.toml)."""
