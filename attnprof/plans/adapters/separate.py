"""Shared reading and writing for families whose q, k, v and o are separate nn.Linear modules."""

from __future__ import annotations

from torch import nn

from attnprof.plans.adapters.base import Adapter, Projections, ShardNames, linear_weight, set_linear


class SeparateLinearAdapter(Adapter):
    """q/k/v/o live at these paths (relative to the adapted module) as nn.Linear."""

    q_path = "q_proj"
    k_path = "k_proj"
    v_path = "v_proj"
    o_path = "o_proj"

    def _linears(self, module: nn.Module) -> list[nn.Module] | None:
        found = []
        for path in (self.q_path, self.k_path, self.v_path, self.o_path):
            try:
                found.append(module.get_submodule(path))
            except AttributeError:
                return None
        return found if all(isinstance(m, nn.Linear) for m in found) else None

    def has_projections(self, module: nn.Module) -> bool:
        return self._linears(module) is not None

    def read(self, module: nn.Module, grad: bool = False) -> Projections:
        q, k, v, o = (linear_weight(m, grad) for m in self._linears(module))
        return Projections(*q, *k, *v, *o)

    def write_projections(self, module: nn.Module, weights: Projections) -> None:
        q, k, v, o = self._linears(module)
        set_linear(q, weights.q_weight, weights.q_bias)
        set_linear(k, weights.k_weight, weights.k_bias)
        set_linear(v, weights.v_weight, weights.v_bias)
        set_linear(o, weights.o_weight, weights.o_bias)

    def shard_names(self, name: str, module: nn.Module) -> ShardNames:
        prefix = f"{name}." if name else ""
        return ShardNames(
            colwise=tuple(prefix + p for p in (self.q_path, self.k_path, self.v_path)),
            rowwise=(prefix + self.o_path,),
        )
