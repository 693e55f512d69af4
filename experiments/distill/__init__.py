"""The toy-world experiment behind ``experiments/toy_distill.py``, by concern."""
