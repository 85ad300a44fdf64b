"""Which module is running right now, in forward and in backward.

Forward: a stack of module calls kept by PyTorch's global forward pre- and post-hooks.

Backward: read from the autograd graph the forward built, with nothing added to it. Every
autograd node takes a number from a per-thread counter when it is created, so the nodes one
module call created are exactly those numbered between its pre-hook and its post-hook
(`torch.autograd._get_sequence_nr()`; torch's own FX annotations tie backward nodes to forward
code the same way). When the outermost call returns, one walk of the graph from its outputs
gives every new node its owner: the innermost call whose range holds the node's number. In
backward, the node the engine is executing (`torch._C._current_autograd_node()`) names the
scope of every op, whatever the module's arguments were (keywords, inputs needing no gradient),
whatever was done to its outputs (in-place ops), however often it ran. An AccumulateGrad node
belongs to the module owning the parameter, so weight-gradient work is always that layer's
backward. A module's forward run inside backward (activation checkpointing's recompute) is the
phase "recompute".

Listeners (timing, memory, trace labels) are told when a scope opens and closes. Backward
scopes open and close at node prehooks placed only where the owner changes along the graph:
the engine runs nodes in decreasing sequence number, so each call's backward is one contiguous
stretch, entered at a node whose consumer lies outside that stretch. Full-backward module hooks
(the alternative) wrap every module's inputs and outputs in a BackwardHookFunction, which breaks
in-place ops on outputs, misses keyword arguments and costs 5-13% of a train step.
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_right
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils.hooks import RemovableHandle

Phase = Literal["forward", "backward", "recompute"]
Site = tuple[str, Phase]  # (module path, phase) of the op running now
ROOT = ""  # named_modules() calls the root module ""
# record_function label of a scope: the prefix + the module path, exactly (the root's is the bare
# prefix), so a trace maps labels back to paths without clashing with a child named "model".
LABEL_PREFIX = "attnprof::"
Node = Any  # torch.autograd.graph.Node; the C++ node classes do not subclass it
# Looked up once: the hooks below run at every module call and scope change of a timed step.
_current_node = torch._C._current_autograd_node
_next_node_number = torch.autograd._get_sequence_nr


class ScopeListener(Protocol):
    def on_enter(self, name: str, phase: Phase) -> None: ...

    def on_exit(self, name: str, phase: Phase) -> None: ...


class _Call:
    """One call of one module's forward (or its recompute) and, later, that call's backward."""

    __slots__ = ("backward_label", "chain", "first_node", "label", "name", "parent", "phase", "suspended")

    def __init__(self, name: str, phase: Phase, parent: _Call | None, first_node: int,
                 suspended: list[_Call] | None = None) -> None:
        self.name = name
        self.phase: Phase = phase  # forward, or recompute when it ran inside backward
        self.parent = parent
        self.first_node = first_node  # sequence number of the first autograd node it could create
        self.chain: tuple[_Call, ...] = (*parent.chain, self) if parent is not None else (self,)  # outermost first
        self.label: Any = None  # open record_function ranges, when labels are on
        self.backward_label: Any = None
        self.suspended = suspended or []  # backward scopes this recompute paused


@dataclasses.dataclass
class _Segments:
    """Which call owns each range of one thread's autograd sequence numbers."""

    starts: list[int] = dataclasses.field(default_factory=list)
    calls: list[_Call | None] = dataclasses.field(default_factory=list)

    def mark(self, number: int, call: _Call | None) -> None:
        """From `number` on, nodes belong to `call`."""
        if self.starts and self.starts[-1] == number:  # the segment before made no node
            self.starts.pop()
            self.calls.pop()
        if self.calls and self.calls[-1] is call:
            return
        self.starts.append(number)
        self.calls.append(call)

    def index(self, number: int) -> int:
        return bisect_right(self.starts, number) - 1  # -1: before the first


def _is_inside(name: str, ancestor: str) -> bool:
    """Whether module `name` is a descendant of module `ancestor` (not the module itself)."""
    return name != ancestor and (ancestor == ROOT or name.startswith(ancestor + "."))


def _grad_fns(output: Any) -> list[Node]:
    """The autograd nodes of the tensors in a module's output (tuples, lists, dicts, ModelOutputs,
    dataclasses)."""
    if isinstance(output, torch.Tensor):
        return [output.grad_fn] if output.grad_fn is not None else []
    if isinstance(output, dict):
        output = list(output.values())
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = [getattr(output, item.name) for item in dataclasses.fields(output)]
    if isinstance(output, (tuple, list)):
        return [node for item in output for node in _grad_fns(item)]
    return []


class ModuleScopes(AbstractContextManager["ModuleScopes"]):
    """Context manager: while active, `site()` names the module and phase of the op running now.

    Modules that do not belong to `model` are ignored. With `backward=False` only forward scopes
    are kept (inference). With `record_labels=True` each scope is also a
    `record_function("attnprof::<path>")` range, so torch.profiler events carry the module path
    in their parent chain.
    """

    def __init__(self, model: nn.Module, record_labels: bool = False, backward: bool = True) -> None:
        self._model = model
        self._names: dict[int, str] = {id(m): name for name, m in model.named_modules()}
        self._record_labels = record_labels
        self._backward = backward
        self._listeners: list[ScopeListener] = []
        self._handles: list[RemovableHandle] = []
        self.order: list[str] = []  # module paths in order of first forward entry
        self._seen: set[str] = set()
        self._parameter_owners: dict[int, str] | None = None
        self._step = 0
        self._reset()

    def _reset(self) -> None:
        self._stack: list[_Call] = []  # forward calls running now, innermost last
        self._open_backward: list[_Call] = []  # backward scopes open now, innermost last
        # Which call made the nodes of each range of sequence numbers. The numbers are per thread:
        # the forward's thread, and for recomputes the backward's (a GPU's backward has its own).
        self._forward_segments = _Segments()
        self._recompute: dict[int, _Segments] = {}
        self._owners: dict[Node, _Call] = {}
        self._step += 1  # node prehooks of an earlier step do nothing

    def add_listener(self, listener: ScopeListener) -> None:
        self._listeners.append(listener)

    def site(self) -> Site:
        """The module running the current op and the phase it runs in."""
        if self._stack:
            top = self._stack[-1]
            if top.phase == "forward" and self._backward and _current_node() is not None:
                return top.name, "backward"  # a backward the module's forward runs itself (autograd.grad)
            return top.name, top.phase
        node = _current_node() if self._backward else None
        if node is None:
            return ROOT, "forward"  # outside the model: the loss, the inputs
        # Backward runs without grad mode; checkpointing recomputes a plain function with it on.
        return self._owner_name(node), "recompute" if torch.is_grad_enabled() else "backward"

    def current(self) -> str:
        return self.site()[0]

    @property
    def phase(self) -> Phase:
        return self.site()[1]

    def depth_of(self, name: str) -> int:
        return 0 if name == ROOT else name.count(".") + 1

    def __enter__(self) -> ModuleScopes:
        self._reset()
        self._handles = [
            module_hooks.register_module_forward_pre_hook(self._forward_pre),
            # always_call: a forward that raises (checkpointing's early stop does) still closes its scope
            module_hooks.register_module_forward_hook(self._forward_post, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self._stack:  # an exception can leave scopes open; close them for the listeners
            call = self._stack.pop()
            self._close(call, call.phase)
        self._end_backward()
        self._reset()  # lets go of the step's autograd nodes

    # --- forward --------------------------------------------------------------------------
    # The hooks return None: a forward hook returning a value would replace the module's output.

    def _forward_pre(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is None:
            return
        if name not in self._seen:
            self._seen.add(name)
            self.order.append(name)
        stack = self._stack
        parent = stack[-1] if stack else None
        if not self._backward:
            call = _Call(name, "forward", parent, 0)
        elif _current_node() is None:
            call = _Call(name, "forward", parent, _next_node_number())
            self._forward_segments.mark(call.first_node, call)
        else:  # a forward inside backward: activation checkpointing's recompute
            paused: list[_Call] = []
            if parent is None:
                parent, paused = self._suspend_backward(name)
            call = _Call(name, "recompute", parent, _next_node_number(), paused)
            self._recompute_segments().mark(call.first_node, call)
        stack.append(call)
        self._open(call, call.phase)

    def _forward_post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self._names.get(id(module))
        stack = self._stack
        if name is None or not stack:
            return
        call = stack.pop()
        if call.name != name:  # a call that raised inside this one (caught there) closes too
            stack.append(call)
            if not any(open_call.name == name for open_call in stack):
                return
            while True:
                call = stack.pop()
                self._close(call, call.phase)
                if call.name == name:
                    break
        else:
            self._close(call, call.phase)
        if not self._backward:
            return
        segments = self._forward_segments if call.phase == "forward" else self._recompute_segments()
        segments.mark(_next_node_number(), stack[-1] if stack else None)
        if not stack:
            if call.phase == "recompute":
                for paused in call.suspended:
                    self._open_backward.append(paused)
                    self._open(paused, "backward")
            self._claim(call, _grad_fns(output), segments)

    def _recompute_segments(self) -> _Segments:
        """Recomputes run on the backward's thread, whose sequence numbers are its own."""
        return self._recompute.setdefault(threading.get_ident(), _Segments())

    # --- the graph a forward built ----------------------------------------------------------

    def _claim(self, outermost: _Call, roots: list[Node], segments: _Segments) -> None:
        """Owners for the nodes the outermost call created, and prehooks where the owner changes."""
        starts, calls = segments.starts, segments.calls
        low, high = outermost.first_node, _next_node_number()
        owners = self._owners
        enter, step = self._enter_backward, self._step
        segment_of: dict[Node, int] = {}
        hooked: set[Node] = set()
        pending: list[tuple[Node, int]] = [(node, -1) for node in roots]  # -1: consumed outside the model
        while pending:
            node, consumer = pending.pop()
            segment = segment_of.get(node)
            if segment is None:
                number = node._sequence_nr()
                if number < low or number >= high or node in owners:
                    continue  # made before this call (an input's), AccumulateGrad, or claimed already
                segment = segment_of[node] = bisect_right(starts, number) - 1
                owners[node] = calls[segment]  # type: ignore[assignment]  # inside the call: never None
                for producer, _ in node.next_functions:
                    if producer is not None:
                        pending.append((producer, segment))
            if segment != consumer and node not in hooked:
                hooked.add(node)
                node.register_prehook(partial(enter, step, owners[node]))

    def _owner_name(self, node: Node) -> str:
        call = self._owners.get(node)
        if call is not None:
            return call.name
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it accumulates into
        if variable is not None:
            owner = self._owner_of_parameters().get(id(variable))
            if owner is not None:
                return owner
            # another leaf (checkpointing's detached inputs): the scope whose backward runs now
            return self._open_backward[-1].name if self._open_backward else ROOT
        # A node no walk reached (a tensor the model kept aside): its number still says who made it.
        segments = self._forward_segments
        index = segments.index(node._sequence_nr())
        call = segments.calls[index] if index >= 0 else None
        return call.name if call is not None else ROOT  # ROOT: the loss, whatever ran outside the model

    def _owner_of_parameters(self) -> dict[int, str]:
        if self._parameter_owners is None:  # shared parameters belong to their first owner
            owners: dict[int, str] = {}
            for name, module in self._model.named_modules():
                for parameter in module.parameters(recurse=False):
                    owners.setdefault(id(parameter), name)
            self._parameter_owners = owners
        return self._parameter_owners

    # --- backward scopes ---------------------------------------------------------------------

    def _enter_backward(self, step: int, call: _Call, grad_outputs: Any = None) -> None:
        """Prehook of a node where the owner changes: open `call`'s chain, closing what it leaves."""
        open_ = self._open_backward
        if (open_ and open_[-1] is call) or step != self._step:
            return
        if not open_:  # the first scope of this backward: close everything when it ends
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
        chain = call.chain
        keep = 0
        while keep < len(open_) and keep < len(chain) and open_[keep] is chain[keep]:
            keep += 1
        while len(open_) > keep:
            self._close(open_.pop(), "backward")
        for opened in chain[keep:]:
            open_.append(opened)
            self._open(opened, "backward")

    def _end_backward(self) -> None:
        while self._open_backward:
            self._close(self._open_backward.pop(), "backward")

    def _suspend_backward(self, name: str) -> tuple[_Call | None, list[_Call]]:
        """A recompute of `name` starts: pause the open backward scopes that are not its ancestors
        (its own backward, or a child's whose node asked for the recompute) until the recompute is
        over, so that its recompute time and its backward time never contain each other. Returns
        the innermost open ancestor (the recompute's parent) and the paused scopes."""
        open_ = self._open_backward
        keep = len(open_)
        while keep > 0 and not _is_inside(name, open_[keep - 1].name):
            keep -= 1
        paused = open_[keep:]
        while len(open_) > keep:
            self._close(open_.pop(), "backward")
        return (open_[-1] if open_ else None), paused

    # --- listeners and labels ------------------------------------------------------------------

    def _open(self, call: _Call, phase: Phase) -> None:
        if self._record_labels:
            label = torch.autograd.profiler.record_function(LABEL_PREFIX + call.name)
            label.__enter__()
            if phase == "backward":
                call.backward_label = label
            else:
                call.label = label
        for listener in self._listeners:
            listener.on_enter(call.name, phase)

    def _close(self, call: _Call, phase: Phase) -> None:
        for listener in self._listeners:
            listener.on_exit(call.name, phase)
        label = call.backward_label if phase == "backward" else call.label
        if label is not None:
            label.__exit__(None, None, None)
            if phase == "backward":
                call.backward_label = None
            else:
                call.label = None
