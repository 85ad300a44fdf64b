"""attnprof: profiler and auto-tuner for attention workloads in PyTorch.

The public Python API lives in attnprof.api and is loaded on first use, so `import attnprof`
(and `attnprof --help`) imports neither torch nor scipy:

    profile = attnprof.profile(model, example_inputs)      # a Profile, as `attnprof profile` saves
    with attnprof.profile_steps(model) as steps: ...       # the steps of your own loop
    plan = attnprof.tune(model, example_inputs, budget=["memory=2GiB"])
    model = attnprof.apply(model, plan, example_inputs)
    result = attnprof.check(profile, "baseline.json")
"""

from typing import Any

from attnprof.version import __version__

_API = ("Profile", "StepProfiler", "apply", "check", "from_pretrained_pruned", "load_plan", "profile",
        "profile_steps", "save", "tune")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from attnprof import api

        return getattr(api, name)
    raise AttributeError(f"module 'attnprof' has no attribute {name!r}")
