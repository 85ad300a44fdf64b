"""Find the attention layers of an unmodified model and the adapter that can rewrite each one.

Modules that look like attention (by class name) but that no adapter understands are listed
by name, so that every plan choice that could not reach them is reported, never skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from attnprof.plans.adapters.base import Adapter, HeadLayout
from attnprof.plans.adapters.bert import BertAdapter
from attnprof.plans.adapters.generic import GenericAdapter
from attnprof.plans.adapters.gpt2 import GPT2Adapter
from attnprof.plans.adapters.llama import LlamaAdapter
from attnprof.plans.adapters.mha import MultiheadAttentionAdapter
from attnprof.plans.records import ALL_LAYERS

# Every attention family: its adapter module and its entry here (the first adapter that matches a
# module wins). Llama before generic: both have q/k/v/o_proj, Llama is recognised by its config-driven
# attributes.
ADAPTERS: tuple[Adapter, ...] = (
    MultiheadAttentionAdapter(),
    LlamaAdapter(),
    GPT2Adapter(),
    BertAdapter(),
    GenericAdapter(),
)

_ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)


@dataclass
class AttentionSite:
    """One attention layer: `name` is the module that runs the attention op (what profiles and
    plans call it); `module_path` is the module the adapter rewrites (its parent for BERT)."""

    name: str
    module_path: str
    module: nn.Module
    adapter: Adapter
    block_path: str | None = None  # the enclosing transformer block (attention + MLP), if any

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def attention_module(self) -> nn.Module:
        child = self.adapter.attention_child
        return self.module.get_submodule(child) if child else self.module

    @property
    def layout(self) -> HeadLayout:
        return self.adapter.layout(self.module)


@dataclass
class Discovery:
    sites: list[AttentionSite] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (module path, class name)

    def select(self, key: str) -> list[AttentionSite]:
        """The sites a plan key names: "*" for all, else a site by either of its paths."""
        if key == ALL_LAYERS:
            return list(self.sites)
        return [s for s in self.sites if key in (s.name, s.module_path)]

    def blocks(self) -> list[str]:
        """Transformer block paths, in model order, without repeats."""
        return list(dict.fromkeys(s.block_path for s in self.sites if s.block_path is not None))


def discover(model: nn.Module) -> Discovery:
    found = Discovery()
    covered: list[str] = []  # subtrees already owned by a site
    for path, module in model.named_modules():
        if any(_inside(path, owner) for owner in covered):
            continue
        adapter = next((a for a in ADAPTERS if a.matches(module)), None)
        if adapter is None:
            continue
        name = f"{path}.{adapter.attention_child}" if adapter.attention_child else path
        found.sites.append(AttentionSite(name=name, module_path=path, module=module, adapter=adapter))
        covered.append(path)
    site_paths = [s.module_path for s in found.sites]
    for path, module in model.named_modules():
        if not path or not _ATTENTION_NAME.search(type(module).__name__):
            continue
        if any(_inside(path, p) or _inside(p, path) for p in site_paths):
            continue  # part of, or a container of, an adapted layer
        if any(_inside(path, p) for p, _ in found.unknown):
            continue  # report the outermost unknown module only
        found.unknown.append((path, type(module).__name__))
    for site in found.sites:
        site.block_path = _block_of(model, site, site_paths)
    return found


def note_sdpa_callers(found: Discovery, model: nn.Module, callers: Iterable[str]) -> None:
    """Modules seen calling scaled_dot_product_attention that no adapter covers are unknown
    attention too, whatever their class is called."""
    for path in callers:
        if any(_inside(path, s.module_path) for s in found.sites):
            continue
        if any(_inside(path, p) for p, _ in found.unknown):
            continue
        found.unknown.append((path, type(model.get_submodule(path)).__name__))


def is_projection(module: nn.Module) -> bool:
    """A weight layer of any family (nn.Linear, GPT-2's Conv1D): what tells a block's MLP apart."""
    return any(adapter.is_projection(module) for adapter in ADAPTERS)


def _inside(path: str, owner: str) -> bool:
    """True when module `path` is `owner` or lies in its subtree ("" is the root)."""
    return path == owner or owner == "" or path.startswith(owner + ".")


def projection_paths(site: AttentionSite) -> set[str]:
    """Paths of every module inside the adapted attention module."""
    prefix = f"{site.module_path}." if site.module_path else ""
    return {site.module_path} | {prefix + p for p, _ in site.module.named_modules() if p}


def _block_of(model: nn.Module, site: AttentionSite, site_paths: list[str]) -> str | None:
    """The nearest ancestor that holds projections besides this attention (its MLP) and no
    other attention layer: the unit that FSDP shards and checkpointing recomputes."""
    parts = site.module_path.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:depth])
        block = model.get_submodule(path)
        others = [p for p in site_paths if p != site.module_path and _inside(p, path)]
        if others:
            return None
        if any(is_projection(m) for m in _outside(block, path, site.module_path)):
            return path
    return None


def _outside(block: nn.Module, block_path: str, attention_path: str) -> list[nn.Module]:
    return [
        m for p, m in block.named_modules() if not _inside(f"{block_path}.{p}" if p else block_path, attention_path)
    ]
