"""What every attention-family adapter provides, and the canonical weight layout they share.

Each family stores its projections differently (separate Linear, fused Conv1D in×out, one
`in_proj_weight`). Adapters translate to and from one canonical form, `Projections`, so head
pruning, GQA conversion and importance scoring are written once, on plain tensors.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class Unsupported(Exception):
    """A transformation this adapter cannot perform on this module; the message says why."""


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass
class Projections:
    """Attention weights in canonical layout: q (H·D, E), k/v (KV·D, E), o (E, H·D); rows of a head
    are contiguous (head h owns rows h·D … h·D+D-1). Biases are None when absent."""

    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    k_weight: torch.Tensor
    k_bias: torch.Tensor | None
    v_weight: torch.Tensor
    v_bias: torch.Tensor | None
    o_weight: torch.Tensor
    o_bias: torch.Tensor | None


@dataclass(frozen=True)
class ShardNames:
    """Module paths, relative to the model, of the projections tensor parallelism splits."""

    colwise: tuple[str, ...]  # q, k, v: output features split, i.e. heads split across ranks
    rowwise: tuple[str, ...]  # o: input features split, outputs summed across ranks


class Adapter(abc.ABC):
    """Base class of one attention family: one subclass per family implements every method."""

    family: str = ""
    attention_child: str = ""  # path of the child that runs the attention op, when not the module itself

    @abc.abstractmethod
    def matches(self, module: nn.Module) -> bool:
        ...

    @abc.abstractmethod
    def layout(self, module: nn.Module) -> HeadLayout:
        ...

    @abc.abstractmethod
    def read(self, module: nn.Module, grad: bool = False) -> Projections:
        """The weights (or, with grad=True, their gradients) in canonical layout."""
        ...

    @abc.abstractmethod
    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        """Replace the weights by `weights` (possibly fewer heads) and set the head counts."""
        ...

    @abc.abstractmethod
    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        """Make the module's forward reshape with these head counts (after pruning or sharding)."""
        ...

    @abc.abstractmethod
    def check_gqa(self, module: nn.Module) -> None:
        """Raise Unsupported if this module cannot run with fewer K/V heads than query heads."""
        ...

    @abc.abstractmethod
    def shard_names(self, name: str, module: nn.Module) -> ShardNames:
        """Raise Unsupported if this family cannot be split by DTensor tensor parallel styles."""
        ...

    def is_projection(self, module: nn.Module) -> bool:
        """Whether `module` is a weight layer of this family's models (blocks are found by them)."""
        return isinstance(module, nn.Linear)

    def config_head_fields(self, layout: HeadLayout) -> dict[str, int]:
        """The model-config fields that state `layout`, for a family whose config states its head
        dim explicitly; none by default, since a config that derives it from the counts must
        keep the counts it was built with."""
        return {}

    def sdpa_forwards(self, module: nn.Module) -> tuple[Callable[..., torch.Tensor], ...]:
        """Forwards (taking the module first) that compute its attention with SDPA, tried in
        place of hand-written attention; none for families whose attention is a library's own."""
        return ()


def tensor_of(param: torch.Tensor, grad: bool) -> torch.Tensor:
    """A parameter's value or its gradient (zeros when none was computed), detached."""
    if not grad:
        return param.detach()
    return param.grad.detach() if param.grad is not None else torch.zeros_like(param.detach())


def linear_weight(linear: nn.Linear, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of an nn.Linear, or their gradients."""
    bias = tensor_of(linear.bias, grad) if linear.bias is not None else None
    return tensor_of(linear.weight, grad), bias


def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give an nn.Linear new weights of a possibly different shape, keeping requires_grad."""
    linear.weight = _like(linear.weight, weight)
    if linear.bias is not None and bias is not None:
        linear.bias = _like(linear.bias, bias)
    linear.out_features, linear.in_features = weight.shape


def new_parameter(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return _like(old, value)


def _like(old: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(
        value.detach().to(dtype=old.dtype, device=old.device).contiguous(), requires_grad=old.requires_grad
    )


def int_attribute(module: nn.Module, name: str) -> int | None:
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
