"""The compatibility matrix ("will prefix tuning work on my model?"): every registered method
on tiny random configs of many architectures (and the real backbones where installed), each
feature checked in isolation, per transformers version.

``architectures`` is the table of models, ``checks`` one function per feature, ``runner``
runs the matrix, ``upstream`` names failures that are transformers' or PEFT's, ``cli`` is
``python -m bench.compat`` / ``prefix-bench compat``. Tables are rendered by the reporting
layer (``bench.report.compat_table``), from the JSON alone.
"""
