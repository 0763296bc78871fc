"""Contracts and records: configs, registries, the result row and its store, cell identity. No torch."""
