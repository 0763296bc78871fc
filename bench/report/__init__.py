"""Reporting: tables, pages, plots, statistics and comparisons from records alone (no torch, methods or tasks)."""
