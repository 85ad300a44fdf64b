"""The Workload record every target form loads into, and the helpers its loaders share:
normalising example inputs, calling user code, fingerprinting an architecture.

Loading a target string is attnprof.targets.load; the zoo and hf: loaders build on this module.
"""

from __future__ import annotations

import importlib
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from attnprof.errors import AttnprofError, Terminated, UsageError, UserCodeError
from attnprof.settings import Settings
from attnprof.store import short_hash

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
T = TypeVar("T")


@dataclass
class Workload:
    target: str
    name: str
    build_model: Callable[[torch.device, torch.dtype], nn.Module]
    make_inputs: Callable[[int, int, torch.device, torch.dtype], Inputs]
    loss_fn: Callable[[Any, Inputs], torch.Tensor] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    config: Any = None  # the transformers config for hf: targets
    architecture: str = ""  # structure fingerprint, set once a model has been built

    def fingerprint(self, settings: Settings) -> str:
        """Architecture + the settings that change what runs (not warm-up or repeats). A chosen
        transformers attention implementation is part of it (left out at "auto", so fingerprints
        taken before it existed still match)."""
        if not self.architecture:
            self.architecture = self._architecture_from_meta_build()
        parts: list[object] = [self.architecture, settings.mode, settings.batch_size, settings.seq_len,
                               settings.dtype, settings.backend, torch.device(settings.device).type]
        if settings.attn_implementation != "auto":
            parts.append(f"attn_implementation={settings.attn_implementation}")
        return short_hash(parts)

    def _architecture_from_meta_build(self) -> str:
        try:
            model = self.build_model(torch.device("meta"), torch.float32)
        except Exception:  # a factory that cannot build on meta: fall back to the target itself
            return short_hash(["target", self.target])
        return architecture_fingerprint(model)


def architecture_fingerprint(model: nn.Module) -> str:
    """Module tree, classes and parameter shapes: equal for equal architectures. A module whose
    forward torch.compile wraps is marked: compiled and eager runs are not the same workload."""
    return short_hash(
        [(name, type(m).__name__, *(("compiled",) if compiled_forward(m) else ())) for name, m in model.named_modules()]
        + [(name, list(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    )


def compiled_forward(module: nn.Module) -> bool:
    """The instance's forward is a torch.compile wrapper (it keeps the function it compiled)."""
    forward = module.__dict__.get("forward")
    return forward is not None and hasattr(forward, "_torchdynamo_orig_callable")


def normalize_inputs(raw: Any, refusal: str) -> Inputs:
    """Example inputs as (args, kwargs), for workloads and `apply()` alike.

    A tensor is the one argument, a tuple or list the arguments (so `[x, x]` is two), a dict the
    keyword arguments, and only a (tuple | list, dict) pair both. Anything else is refused with
    `refusal`, which names its source and verb ("model.py: example_inputs() must return").
    """
    if isinstance(raw, dict):
        return (), dict(raw)
    if isinstance(raw, torch.Tensor):
        return (raw,), {}
    if isinstance(raw, (tuple, list)):
        if len(raw) == 2 and isinstance(raw[0], (tuple, list)) and isinstance(raw[1], dict):
            return tuple(raw[0]), dict(raw[1])
        return tuple(raw), {}
    raise UsageError(
        f"{refusal} a tuple of arguments, a dict of keyword arguments or (args, kwargs); got {type(raw).__name__}"
    )


class _Interrupts:
    """Tells a real Ctrl-C from user code raising KeyboardInterrupt itself: SIGINT's handler is
    wrapped (once, from the main thread, when it is Python's default) to count the signals that
    arrived before it raises."""

    watching = False
    received = 0

    @classmethod
    def watch(cls) -> None:
        if cls.watching or threading.current_thread() is not threading.main_thread():
            return
        cls.watching = True
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls._on_sigint)

    @classmethod
    def _on_sigint(cls, signum: int, frame: Any) -> None:
        cls.received += 1
        signal.default_int_handler(signum, frame)

    @classmethod
    def from_user(cls, exc: KeyboardInterrupt, received_before: int) -> bool:
        """Whether user code raised `exc` itself: no SIGINT came while it ran, and it is not
        attnprof's own interruption (SIGTERM arrives as Terminated, a KeyboardInterrupt
        subclass). Unknown (the handler could not be watched): a real interruption."""
        watched = signal.getsignal(signal.SIGINT) == cls._on_sigint
        return watched and cls.received == received_before and not isinstance(exc, Terminated)


def call_user(fn: Callable[..., T], *args: Any, what: str, **kwargs: Any) -> T:
    """Run user code; every way it leaves other than returning becomes UserCodeError (exit 3)
    carrying the user's own frames: an exception, `sys.exit()` (whatever its code: a model that
    exits 0 must not pass a check it never ran), GeneratorExit, a KeyboardInterrupt it raised
    itself. A real Ctrl-C or SIGTERM goes on as an interruption."""
    _Interrupts.watch()
    received = _Interrupts.received
    try:
        return fn(*args, **kwargs)
    except AttnprofError:
        raise
    except SystemExit as exc:
        raise UserCodeError(
            f"{what} called sys.exit({exc.code!r}): attnprof cannot measure code that exits", user_traceback(exc)
        ) from exc
    except KeyboardInterrupt as exc:
        if not _Interrupts.from_user(exc, received):
            raise
        raise UserCodeError(f"{what} raised KeyboardInterrupt itself (no Ctrl-C came)", user_traceback(exc)) from exc
    except BaseException as exc:
        raise UserCodeError(f"{what} raised {type(exc).__name__}: {exc}", user_traceback(exc)) from exc


# The whole attnprof package, not only this folder: its wrappers (hooks, scopes) run around user code.
_OWN_DIRS = (str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent),
             str(Path(importlib.__file__).resolve().parent))


def user_traceback(exc: BaseException) -> str:
    """The exception's traceback without attnprof's, torch's or the import system's frames."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith(_OWN_DIRS) and not frame.filename.startswith("<frozen")
    ]
    if not frames:  # e.g. an error raised by torch itself on the user's inputs
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)

