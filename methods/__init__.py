"""Method plugins. Importing this package registers the built-in methods; third-party
methods register through the ``prefix_bench.methods`` entry-point group."""

from methods import full_finetune, lora, prefix_tuning, prompt_tuning  # noqa: F401  (registration)
from methods.base import METHODS, Adapter, AttachContext, Anatomy, Method, MethodConfig, register_method

__all__ = ["METHODS", "Adapter", "AttachContext", "Anatomy", "Method", "MethodConfig", "register_method"]
