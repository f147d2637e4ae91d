"""The sections of ``scripts/gpu_check.py``: one module per section, each a list of row specs.

A section module has ``NAME`` (for ``--only``), ``TITLE``, ``BUDGET_S`` (its time box per mode) and
``specs(ctx) -> list[RowSpec]``; :mod:`gpucheck.rows` runs them so that one failing row never stops the others.
"""
