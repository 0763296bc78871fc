"""Measuring a cell: memory peaks, FLOPs and MFU, provenance, the reproducible-kernels mode."""
