"""Each paper's own training step and experiment loop, one module per paper.

These modules are the papers' contribution as code (what each chapter shows with ``show_source``
right after the equation it implements); the infrastructure they use (data, models, losses, the
fit loop, metrics, reports) lives in the rest of :mod:`fer_nb`.
"""
