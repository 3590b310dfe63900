"""Adapters to other tools; each module imports its tool, so import them only where that tool is installed."""
