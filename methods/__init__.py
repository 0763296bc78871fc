"""Method plugins. Importing this package registers the built-in methods; third-party
methods register through the ``prefix_bench.methods`` entry-point group."""

from methods import (  # noqa: F401  (registration)
    full_finetune,
    lora,
    p_tuning_v2,
    prefix_tuning,
    prefix_tuning_plus,
    prompt_tuning,
    residual_prefix,
)
from methods.base import METHODS, Adapter, Anatomy, AttachContext, Method, MethodConfig, register_method

__all__ = ["METHODS", "Adapter", "AttachContext", "Anatomy", "Method", "MethodConfig", "register_method"]
