"""attnprof: profiler and auto-tuner for attention workloads in PyTorch."""

__version__ = "0.1.0"
