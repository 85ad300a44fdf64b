"""attnprof: profiler and auto-tuner for attention workloads in PyTorch."""

__version__ = "0.1.0"

from attnprof.apply import apply, load_plan  # binds attnprof.apply to the function

__all__ = ["__version__", "apply", "load_plan"]
