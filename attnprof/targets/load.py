"""Target string -> Workload: the model factory, its example inputs and optional loss.

Target forms (docs/architecture.md, "Target strings"):
  path/model.py              defines build_model(device, dtype) and example_inputs(batch, seq, device, dtype)
  path/model.py:make_net     another factory name in that file
  package.module[:factory]   the same contract in an importable module
  hf:<name or config dir>    a transformers model from its config, random weights, never downloaded
  zoo:<name>                 a built-in workload; no target means the default one
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprof.errors import UsageError, UserCodeError
from attnprof.settings import Settings
from attnprof.store import short_hash
from attnprof.targets.hf import load_hf
from attnprof.targets.workload import Inputs, Workload, call_user, normalize_inputs
from attnprof.targets.zoo import load_zoo

DEFAULT_TARGET = "zoo:decoder"


def load_workload(target: str | None) -> Workload:
    """Parse a target string and load what it names (exit 2 on bad targets, 3 on user errors)."""
    target = (DEFAULT_TARGET if target is None else target).strip()  # "": an unset variable, refused
    try:
        return _load_target(target)
    except (OSError, ValueError) as exc:
        # A path the OS refuses (name too long, NUL byte): a bad target, not a crash. Errors
        # of the user's code arrive here already wrapped as UserCodeError.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{target[:200]!r}: not a loadable target ({reason})") from None


def _load_target(target: str) -> Workload:
    if not target:
        raise UsageError(
            "the target is empty (an unset variable?): name one, e.g. model.py or zoo:decoder, or give none for "
            f"{DEFAULT_TARGET}"
        )
    if target.startswith("zoo:"):
        return load_zoo(target)
    if target.startswith("hf:"):
        return load_hf(target)
    path_part, _, factory = _split_factory(target)
    if path_part.endswith(".py") or Path(path_part).is_file():
        module = _import_file(Path(path_part))
    else:
        module = _import_module(path_part)
    return workload_from_module(module, target, factory or "build_model")


def _split_factory(target: str) -> tuple[str, str, str]:
    # "C:\\x.py" never occurs on the platforms we run; a single trailing ":name" is the factory.
    path_part, sep, factory = target.rpartition(":")
    if not sep:
        return target, "", ""
    if not factory.isidentifier():
        raise UsageError(f"{target!r}: the factory after ':' must be a Python name, got {factory!r}")
    return path_part, sep, factory


def _import_file(path: Path) -> types.ModuleType:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    name = f"attnprof_user_{short_hash(str(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The user's own folder is importable from their model file, as when they run it.
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        call_user(spec.loader.exec_module, module, what=f"importing {path}")
    except UserCodeError:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(folder)
    return module


def _import_module(name: str) -> types.ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(
            f"{name!r} is not a target: use path/model.py[:factory], package.module[:factory], hf:NAME or zoo:NAME"
        )
    spec = _find_spec(name)
    if spec is None:
        # As `python -m` does, the current folder is importable: `attnprof profile mypkg.models:factory`
        # run next to mypkg/. It goes last and stays (the module's own later imports need it).
        here = os.getcwd()
        if here not in sys.path and "" not in sys.path:
            sys.path.append(here)
            importlib.invalidate_caches()
            spec = _find_spec(name)
    if spec is None:
        raise UsageError(f"{name!r}: no such file or importable module")
    return call_user(importlib.import_module, name, what=f"importing {name}")


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def workload_from_module(module: types.ModuleType, target: str, factory: str) -> Workload:
    build = getattr(module, factory, None)
    if not callable(build):
        raise UsageError(f"{target}: defines no function {factory}(device, dtype) returning the model")
    example_inputs = getattr(module, "example_inputs", None)
    if not callable(example_inputs):
        raise UsageError(f"{target}: defines no function example_inputs(batch_size, seq_len, device, dtype)")
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"{target}: loss_fn must be a function (output, inputs) -> Tensor")
    defaults = getattr(module, "ATTNPROF", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{target}: ATTNPROF must be a dict of default settings")
    _check_settings_keys(defaults, target)

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        model = call_user(build, device, dtype, what=f"{factory}()")
        if not isinstance(model, nn.Module):
            raise UsageError(f"{target}: {factory}() must return a torch.nn.Module, got {type(model).__name__}")
        return model

    def make_inputs(batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        raw = call_user(example_inputs, batch_size, seq_len, device, dtype, what="example_inputs()")
        return normalize_inputs(raw, f"{target}: example_inputs() must return")

    user_loss = None
    if loss_fn is not None:

        def user_loss(output: Any, inputs: Inputs) -> torch.Tensor:
            return call_user(loss_fn, output, inputs, what="loss_fn()")

    name = Path(target.split(":")[0]).stem if target.split(":")[0].endswith(".py") else module.__name__
    return Workload(target, name, build_model, make_inputs, user_loss, dict(defaults))


def _check_settings_keys(defaults: dict[str, Any], target: str) -> None:
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise UsageError(f"{target}: ATTNPROF has unknown settings {unknown}; known: {sorted(known)}")


def data_file_target(named: str, source: Path, project: Path) -> str:
    """The target a data file (a plan, a baseline) names, when nothing else names one.

    A file someone sent must never run code they chose: the target it names is run only when
    no code is imported (zoo:, hf:) or when its code resolves inside `project` (the folder of
    the project's pyproject.toml, else the working directory). Anything else is refused; the
    command line or [tool.attnprof] target names the workload instead. Nothing is imported here.
    """
    refusal = (
        f"{source} names the target {named[:200]!r}, {{why}}; attnprof does not run code a data file "
        "names: give the target on the command line or as [tool.attnprof] target"
    )
    if named.startswith(("zoo:", "hf:")):
        return named
    if not named.strip():
        raise UsageError(refusal.format(why="which is empty"))
    try:
        location = _code_location(named)
    except UsageError as exc:
        raise UsageError(refusal.format(why=f"which is not loadable ({exc})")) from None
    if location is None:
        raise UsageError(refusal.format(why="which is built into Python"))
    real, root = Path(os.path.realpath(location)), Path(os.path.realpath(project))
    if not real.is_relative_to(root):
        raise UsageError(refusal.format(why=f"whose code is {real}, outside this project ({root})"))
    return named


def target_source(target: str | None) -> Path | None:
    """The file a target's workload is read from (its model file, its module's file, an hf:
    folder's config.json), found without importing anything; None when there is none or the
    target does not name one that exists (loading it then says why)."""
    if target is None or target.startswith("zoo:"):
        return None
    if target.startswith("hf:"):
        config = Path(target.removeprefix("hf:")) / "config.json"
        return config if config.is_file() else None
    try:
        return _code_location(target)
    except (UsageError, OSError, ValueError):
        return None


def _code_location(target: str) -> Path | None:
    """The file a file or module target's code lives in, found without importing anything
    (None for a module built into the interpreter)."""
    path_part, _, _ = _split_factory(target)
    if path_part.endswith(".py") or Path(path_part).is_file():
        if not Path(path_part).is_file():
            raise UsageError(f"{path_part}: no such file")
        return Path(path_part)
    if not path_part or not all(part.isidentifier() for part in path_part.split(".")):
        raise UsageError("not a file or module name")
    top, *subs = path_part.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name imports nothing to be found
    except (ImportError, ValueError):
        spec = None
    for part in subs:  # a submodule is looked up in its package's folders, not imported
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        spec = importlib.machinery.PathFinder.find_spec(part, folders) if folders else None
    if spec is None:
        raise UsageError(f"no module {path_part!r}")
    if spec.origin is None or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin)
