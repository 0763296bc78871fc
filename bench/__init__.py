"""prefix-bench: the runner (matrix expansion, one trainer, records, rendering)."""

__version__ = "0.1.0"
