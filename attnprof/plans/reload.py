"""A transformers model pruned per layer, saved with `save_pretrained`, loaded again.

transformers builds every layer from the config's one head count and (since 5.0) ignores
`config.pruned_heads`, so `from_pretrained` of a model whose layers keep different head counts
fails with a size mismatch. Here the model is built from its saved config, the heads that
`config.pruned_heads` records (plans.heads.update_config writes them when a plan prunes) are
removed by index, as the plan removed them, and the saved weights are then loaded strictly into
the shapes that now match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from attnprof.errors import UsageError
from attnprof.plans.discover import discover
from attnprof.plans.engine import apply_plan
from attnprof.plans.records import PlanChoices


def from_pretrained_pruned(model_class: Any, folder: str | Path) -> nn.Module:
    """`model_class.from_pretrained(folder)` for a model a plan pruned per layer."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{folder}: no .safetensors weights (save the pruned model with save_pretrained)")
    config = model_class.config_class.from_pretrained(folder)
    model = model_class(config)
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))
    if not _mismatched(model, state):
        model.load_state_dict(state, strict=False)  # counts in the config already say it all
    else:
        pruned = {int(k): list(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
        sites = {getattr(site.attention_module, "layer_idx", None): site.name for site in discover(model).sites}
        unknown = sorted(set(pruned) - set(sites))
        if not pruned or unknown:
            raise UsageError(
                f"{folder}: the saved weights do not fit {model_class.__name__} built from its config, and "
                f"config.pruned_heads {'is empty' if not pruned else f'names layers {unknown} it does not have'}"
            )
        model, report = apply_plan(model, PlanChoices(prune_heads={sites[k]: heads for k, heads in pruned.items()}))
        if report.not_applied or _mismatched(model, state):
            raise UsageError(f"{folder}: pruning the recorded heads does not give the saved weights' shapes")
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()  # tied weights (an LM head sharing the embedding) are saved once
    untied = [key for key in missing if key not in _tied(model)]
    if untied or unexpected:
        raise UsageError(f"{folder}: weights missing {untied[:3]} or unexpected {list(unexpected)[:3]}")
    return model.eval()


def _mismatched(model: nn.Module, state: dict[str, Any]) -> bool:
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return any(key in shapes and shapes[key] != tuple(value.shape) for key, value in state.items())


def _tied(model: nn.Module) -> set[str]:
    """Parameter names that share storage with another parameter."""
    seen: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(parameter.data_ptr(), name)
    return tied
