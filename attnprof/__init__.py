"""attnprof: profiler and auto-tuner for attention workloads in PyTorch.

The public Python API lives in attnprof.api and is loaded on first use, so `import attnprof`
(and `attnprof --help`) imports neither torch nor scipy.
"""

from typing import Any

from attnprof.version import __version__

__all__ = ["__version__", "apply", "from_pretrained_pruned", "load_plan"]
_API = ("apply", "from_pretrained_pruned", "load_plan")


def __getattr__(name: str) -> Any:
    if name in _API:
        from attnprof import api

        return getattr(api, name)
    raise AttributeError(f"module 'attnprof' has no attribute {name!r}")
