"""The knobs of a plan, their values, and which combinations are valid on a device.

`PLAN_KNOBS` is the one table of the knobs `tune --knobs` can turn: what each changes, the
PlanChoices fields it sets, how it is priced, and when it is on by default; the knob lists of
the tuning loop and the `--knobs` help are read from it. Every value left out of the space is
left out by a named rule with a reason, so `tune` can say why a plan the user expected was never
considered. Global knobs (backend, precision, micro-batch, threads, compile, sharding) form
`GlobalChoice`s; per-layer knobs (heads pruned, K/V heads, activation checkpointing) form one
list of `LayerOption`s per attention layer.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from attnprof import backends as known_backends
from attnprof.errors import UsageError
from attnprof.plans.records import PRECISIONS
from attnprof.settings import MODES, Settings

# How a knob is priced, which also says whether it is global or per attention layer:
#   choice       global; one probe per value, priced as a ratio against the reference choice
#   micro_batch  global; priced along the latency and memory lines over the micro-batch
#   sharding     global; priced by the alpha-beta model of `sharding`, measured on one device only
#   layer        per attention layer; priced by the FLOPs, parameters and activations it changes
KnobKind = Literal["choice", "micro_batch", "sharding", "layer"]


@dataclass(frozen=True)
class PlanKnob:
    """One knob of a plan. A global knob's name is also its field of GlobalChoice and PlanChoices."""

    name: str
    changes: str  # what it changes, for --help
    fields: tuple[str, ...]  # the PlanChoices fields it sets
    kind: KnobKind
    default_modes: tuple[str, ...] = MODES  # modes in which it is on without --knobs; (): only when named
    default_gpus: int = 1  # ... and from how many devices on

    def on_by_default(self, mode: str, gpus: int) -> bool:
        return mode in self.default_modes and gpus >= self.default_gpus

    def default_condition(self) -> str:
        """When it is on without --knobs, in words ("" for always)."""
        if not self.default_modes:
            return "only when named"
        words = [f"in {' and '.join(self.default_modes)} mode"] if self.default_modes != MODES else []
        if self.default_gpus > 1:
            words.append(f"with --gpus {self.default_gpus} or more")
        return " ".join(words)


PLAN_KNOBS: tuple[PlanKnob, ...] = (
    PlanKnob("backend", "the SDPA kernel", ("backend",), "choice"),
    PlanKnob("dtype", "the precision", ("dtype", "precision"), "choice"),
    PlanKnob("batch_size", "the micro-batch", ("batch_size",), "micro_batch"),
    PlanKnob("threads", "CPU threads", ("threads",), "choice"),
    # Compiling costs tens of seconds per graph on a CPU: only when named.
    PlanKnob("compile", "transformer blocks compiled by torch.compile", ("compile",), "choice", default_modes=()),
    # Knobs that change the model's architecture: off unless asked for with --knobs.
    PlanKnob("heads", "attention heads pruned", ("prune_heads",), "layer", default_modes=()),
    PlanKnob("kv_heads", "K/V heads merged, as in GQA", ("kv_heads",), "layer", default_modes=()),
    PlanKnob("checkpoint", "activations recomputed in backward", ("checkpoint",), "layer", default_modes=("train",)),
    PlanKnob("tensor_parallel", "heads split over devices", ("tensor_parallel",), "sharding", default_gpus=2),
    PlanKnob("pipeline_stages", "blocks split into pipeline stages", ("pipeline_stages",), "sharding", default_gpus=2),
    PlanKnob(
        "data_parallel",
        "batch split over DDP or FSDP replicas",
        ("data_parallel", "data_parallel_mode"),
        "sharding",
        default_gpus=2,
    ),
)
KNOB_NAMES: tuple[str, ...] = tuple(knob.name for knob in PLAN_KNOBS)
KNOBS_EXAMPLE = "--knobs backend,dtype,batch_size,heads"


def knob_names(*kinds: KnobKind) -> tuple[str, ...]:
    """The knobs of these kinds, in table order."""
    return tuple(knob.name for knob in PLAN_KNOBS if knob.kind in kinds)


def knob_fields(*kinds: KnobKind) -> tuple[str, ...]:
    """The PlanChoices fields the knobs of these kinds set."""
    return tuple(name for knob in PLAN_KNOBS if knob.kind in kinds for name in knob.fields)


GLOBAL_KINDS: tuple[KnobKind, ...] = ("choice", "micro_batch", "sharding")
SHARDING_KNOBS: tuple[str, ...] = knob_names("sharding")


def knobs_help() -> str:
    """The --knobs help: every knob and what it changes, and which are on without --knobs."""
    listed = ", ".join(f"{knob.name} ({knob.changes})" for knob in PLAN_KNOBS)
    conditions: dict[str, list[str]] = {}
    for knob in PLAN_KNOBS:
        conditions.setdefault(knob.default_condition(), []).append(knob.name)
    defaults = "; ".join(" ".join([", ".join(names), condition]).strip() for condition, names in conditions.items())
    return f"Comma-separated knobs the plan may change: {listed}. Default: {defaults}."


Excluder = Callable[[str, object, "str | None"], bool]  # records a left-out value; True when left out

PLAN_PRECISIONS: tuple[str, ...] = (*PRECISIONS, "fp8")


@dataclass(frozen=True)
class DeviceFacts:
    """What the device can run, read from torch (never assumed)."""

    type: str  # cpu | cuda
    name: str
    capability: tuple[int, int] | None  # CUDA compute capability
    cpu_count: int

    @classmethod
    def probe(cls, device: str) -> DeviceFacts:
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            return cls("cuda", torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index), cpus)
        return cls("cpu", "cpu", None, cpus)


@dataclass(frozen=True)
class AttentionLayout:
    """One attention layer's head layout, named by module path; with the paths of its block and
    of the block's MLP ("" where the model has none), which checkpointing may recompute instead."""

    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block: str = ""
    mlp: str = ""

    def checkpoint_scope(self, path: str) -> str:
        """attention, mlp or block: what the module at `path` is to this layer."""
        return {self.name: "attention", self.mlp: "mlp", self.block: "block"}[path]


@dataclass(frozen=True)
class Exclusion:
    knob: str
    value: str
    reason: str


@dataclass(frozen=True)
class GlobalChoice:
    backend: str
    dtype: str
    batch_size: int  # micro-batch: samples per forward
    threads: int  # 0: unchanged
    tensor_parallel: int = 1
    pipeline_stages: int = 1
    data_parallel: int = 1
    data_parallel_mode: str = "fsdp"
    compile: bool = False

    def as_config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "backend": self.backend,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "threads": self.threads,
        }
        if self.compile:
            config["compile"] = True
        if self.world_size > 1:
            config.update(tp=self.tensor_parallel, pp=self.pipeline_stages, dp=self.data_parallel)
            if self.data_parallel > 1:
                config["dp_mode"] = self.data_parallel_mode
        return config

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_stages * self.data_parallel

    def single_device(self) -> GlobalChoice:
        """The one-device part of the choice, sharding knobs at their defaults: what one replica
        runs per micro-step."""
        return dataclasses.replace(self, **{name: _UNSHARDED[name] for name in knob_fields("sharding")})


_UNSHARDED = {f.name: f.default for f in dataclasses.fields(GlobalChoice)}


@dataclass(frozen=True)
class LayerOption:
    """One per-layer choice: heads pruned, K/V heads kept (None: unchanged), and the module
    recomputed in backward ("": none; the attention layer itself, its MLP or its whole block)."""

    prune: int = 0
    kv_heads: int | None = None
    checkpoint: str = ""

    def label(self, layout: AttentionLayout) -> str:
        parts = []
        if self.prune:
            parts.append(f"heads {layout.num_heads}->{layout.num_heads - self.prune}")
        if self.kv_heads is not None:
            grouped = layout.num_kv_heads < layout.num_heads
            before = layout.num_kv_heads if grouped else layout.num_heads - self.prune
            parts.append(f"kv {before}->{self.kv_heads}")
        if self.checkpoint:
            parts.append(f"checkpoint {layout.checkpoint_scope(self.checkpoint)}")
        return " ".join(parts)


@dataclass
class PlanSpace:
    globals: list[GlobalChoice]
    layouts: list[AttentionLayout]
    layer_options: dict[str, list[LayerOption]]  # attention layer -> its valid options without sharding
    excluded: list[Exclusion] = field(default_factory=list)

    def options_for(self, layout: AttentionLayout, tensor_parallel: int) -> list[LayerOption]:
        """The layer's options that still hold when its heads are split over `tensor_parallel` ranks."""
        options = []
        for option in self.layer_options[layout.name]:
            kept = layout.num_heads - option.prune
            reason = heads_rule(layout, option.prune, tensor_parallel)
            if reason is None and option.kv_heads is not None:
                reason = kv_heads_rule(layout, option.kv_heads, kept, tensor_parallel)
            if reason is None:
                options.append(option)
            else:
                exclusion = Exclusion("heads", f"{layout.name} {option.label(layout)} at tp={tensor_parallel}", reason)
                if exclusion not in self.excluded:
                    self.excluded.append(exclusion)
        return options

    def size(self) -> int:
        total = 0
        for choice in self.globals:
            per_layer = 1
            for layout in self.layouts:
                per_layer *= len(self.options_for(layout, choice.tensor_parallel))
            total += per_layer
        return total


def default_plan_knobs(mode: str, gpus: int) -> list[str]:
    return [knob.name for knob in PLAN_KNOBS if knob.on_by_default(mode, gpus)]


def parse_plan_knobs(text: str | None, mode: str, gpus: int) -> list[str]:
    """`--knobs backend,dtype,heads` -> knob names; None gives the non-architectural defaults."""
    if text is None:
        return default_plan_knobs(mode, gpus)
    names = [part.strip().replace("-", "_") for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"--knobs: empty list; e.g. {KNOBS_EXAMPLE}")
    for name in names:
        if name not in KNOB_NAMES:
            raise UsageError(f"--knobs: unknown knob {name!r} (known: {', '.join(KNOB_NAMES)}); e.g. {KNOBS_EXAMPLE}")
    return list(dict.fromkeys(names))


def parse_backend_values(text: str | None) -> tuple[str, ...] | None:
    """`--backends math,flash,flex,eager` -> the backend knob's values; None keeps the SDPA kernels."""
    if text is None:
        return None
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in known_backends.PLAN_NAMES]
    if not names or unknown:
        raise UsageError(
            f"--backends: {'unknown ' + ', '.join(map(repr, unknown)) if unknown else 'empty list'} "
            f"(known: {', '.join(known_backends.PLAN_NAMES)}); e.g. --backends math,flash,flex"
        )
    return names


# --- rules: each returns the reason a value is invalid, or None ----------------------------------


def backend_rule(
    facts: DeviceFacts, backend: str, dtype: str, train: bool = False, attn_implementations: Sequence[str] = ()
) -> str | None:
    """`attn_implementations`: those the transformers model offers; () for a model of other code."""
    reason = known_backends.unsupported_reason(backend, facts.type, facts.capability, dtype, train)
    if reason is not None or backend == known_backends.AUTO:
        return reason
    entry = known_backends.get(backend)
    if entry.hf_only and not attn_implementations:
        return f"{entry.label} is an implementation of transformers models (hf: targets) only"
    if attn_implementations and entry.hf_attn_implementation not in attn_implementations:
        return f"the model's class has no {entry.hf_attn_implementation} attention implementation"
    return None


COMPILE_UNSHARDED = "compiled plans run on one device"
COMPILE_WITH_FLEX = "the flex backend compiles flex_attention itself; blocks are not compiled around it"


def dtype_rule(facts: DeviceFacts, dtype: str) -> str | None:
    if dtype == "tf32" and (facts.type != "cuda" or (facts.capability or (0, 0))[0] < 8):
        return "TF32 is a tensor-core mode of NVIDIA GPUs with compute capability >= 8.0"
    if dtype == "bf16" and facts.type == "cuda" and (facts.capability or (0, 0))[0] < 8:
        return "bf16 needs compute capability >= 8.0"
    if dtype == "fp8":
        if facts.type != "cuda" or (facts.capability or (0, 0)) < (8, 9):
            return "fp8 matmuls need an NVIDIA GPU with compute capability >= 8.9"
        return "plan application does not implement fp8 matmuls (torch._scaled_mm) yet"
    return None


def micro_batch_values(batch_size: int) -> list[int]:
    """Powers of two dividing the batch, and the batch itself: the batch splits into equal parts."""
    values = {batch_size}
    size = 1
    while size < batch_size:
        if batch_size % size == 0:
            values.add(size)
        size *= 2
    return sorted(values)


# With `--objective throughput` the batch itself may grow by these factors (samples per step),
# as far as the memory budget allows: more samples per step amortise a step's fixed costs.
THROUGHPUT_BATCH_GROWTH: tuple[int, ...] = (2, 4, 8)


def thread_values(facts: DeviceFacts) -> list[int]:
    values = {facts.cpu_count}
    size = 1
    while size < facts.cpu_count:
        values.add(size)
        size *= 2
    return sorted(values)


def heads_rule(layout: AttentionLayout, prune: int, tensor_parallel: int) -> str | None:
    kept = layout.num_heads - prune
    if kept < 1:
        return "at least one head must remain"
    grouped = layout.num_kv_heads < layout.num_heads  # MHA prunes each query head with its K/V head
    if grouped and kept % layout.num_kv_heads:
        return f"kept heads must be a multiple of the {layout.num_kv_heads} K/V heads (equal GQA groups)"
    if kept % tensor_parallel:
        return f"kept heads must divide evenly over tensor-parallel degree {tensor_parallel}"
    return None


def kv_heads_rule(layout: AttentionLayout, kv_heads: int, kept_heads: int, tensor_parallel: int) -> str | None:
    current = layout.num_kv_heads if layout.num_kv_heads < layout.num_heads else kept_heads
    if kv_heads >= current:
        return f"GQA conversion reduces the {current} K/V heads"
    if current % kv_heads:
        return f"K/V heads must divide the current {current} (whole groups are mean-pooled)"
    if kv_heads % tensor_parallel:
        return f"K/V heads must divide evenly over tensor-parallel degree {tensor_parallel}"
    return None


def tensor_parallel_rule(layouts: Sequence[AttentionLayout], degree: int) -> str | None:
    for layout in layouts:
        if layout.num_heads % degree or layout.num_kv_heads % degree:
            return f"{layout.name} has {layout.num_heads}/{layout.num_kv_heads} heads: not divisible by {degree}"
    return None


# Sharding that cannot be measured or applied (plans.sharding.check_shardable): never in a plan.
PIPELINE_ALONE = "pipeline stages run alone: apply does not combine them with tensor or data parallelism"
PIPELINE_INFERENCE_ONLY = "pipeline stages run inference only (only the last stage's output reaches every rank)"
DDP_WITH_TP_UNSUPPORTED = "DDP cannot wrap tensor-parallel DTensors: tensor parallel replicas use FSDP2"


def pipeline_rule(tensor_parallel: int, data_parallel: int, train: bool) -> str | None:
    if train:
        return PIPELINE_INFERENCE_ONLY
    return PIPELINE_ALONE if tensor_parallel > 1 or data_parallel > 1 else None


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def build_space(
    facts: DeviceFacts,
    layouts: Sequence[AttentionLayout],
    settings: Settings,
    knobs: Iterable[str],
    gpus: int = 1,
    blocks: int = 1,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    tensor_parallel_blocker: str | None = None,
    attn_implementations: Sequence[str] = (),
    larger_batches: bool = False,
) -> PlanSpace:
    """All valid plans for the allowed knobs that `attnprof apply` can run; every left-out value
    is recorded with its reason.

    `blocks` is the number of repeated blocks a pipeline can split; `backends`/`dtypes` narrow the
    candidate values (e.g. to those the cost model has measured); `tensor_parallel_blocker` is why
    apply could not shard this model's layers (plans.sharding.tensor_parallel_blocker), if so.
    The backend knob's values are the SDPA kernels unless `backends` names others (flex, and for
    transformers models eager: their `attn_implementations`, targets.hf.attn_implementations);
    `larger_batches` (the throughput objective) adds whole batches THROUGHPUT_BATCH_GROWTH times
    the workload's to the micro-batch knob.
    """
    knobs = set(knobs)
    excluded: list[Exclusion] = []

    def exclude(knob: str, value: object, reason: str | None) -> bool:
        if reason is not None:
            excluded.append(Exclusion(knob, str(value), reason))
        return reason is not None

    cpu_default = known_backends.CPU_DEFAULT if facts.type == "cpu" else known_backends.AUTO
    base_backend = settings.backend if settings.backend != known_backends.AUTO else cpu_default
    backend_values = list(backends or known_backends.SDPA_NAMES) if "backend" in knobs else [base_backend]
    dtype_values = list(dtypes or PLAN_PRECISIONS) if "dtype" in knobs else [settings.dtype]
    threads_values = thread_values(facts) if "threads" in knobs and facts.type == "cpu" else [settings.threads]
    compile_values = [False, True] if "compile" in knobs else [False]
    if "threads" in knobs and facts.type != "cpu":
        exclude("threads", "*", "threads apply to CPU execution only")

    dtype_values = [d for d in dtype_values if not exclude("dtype", d, dtype_rule(facts, d))]
    train = settings.mode == "train"
    sharding = _sharding_choices(layouts, knobs, gpus, blocks, settings.batch_size, exclude, tensor_parallel_blocker,
                                 train)
    globals_: list[GlobalChoice] = []
    for backend, dtype in itertools.product(backend_values, dtype_values):
        reason = backend_rule(facts, backend, dtype, train, attn_implementations)
        if backend != "auto" and exclude("backend", f"{backend} with {dtype}", reason):
            continue
        for threads, (tp, pp, dp, mode), compiled in itertools.product(threads_values, sharding, compile_values):
            if compiled and (
                exclude("compile", f"with tp={tp} pp={pp} dp={dp}", COMPILE_UNSHARDED if tp * pp * dp > 1 else None)
                or exclude("compile", "with backend flex", COMPILE_WITH_FLEX if backend == "flex" else None)
            ):
                continue
            # Each data-parallel replica takes an equal share of the batch, in equal micro-batches.
            replica_batch = settings.batch_size // dp
            batches = micro_batch_values(replica_batch) if "batch_size" in knobs else [replica_batch]
            if larger_batches and "batch_size" in knobs:
                batches += [replica_batch * growth for growth in THROUGHPUT_BATCH_GROWTH]
            globals_.extend(
                GlobalChoice(backend, dtype, batch, threads, tp, pp, dp, mode, compiled) for batch in batches
            )

    layer_options = {layout.name: _layer_options(layout, knobs, settings.mode, exclude) for layout in layouts}
    if "checkpoint" in knobs and settings.mode != "train":
        exclude("checkpoint", "*", "checkpointing trades recomputation for saved activations: train mode only")
    return PlanSpace(globals_, list(layouts), layer_options, excluded)


def _sharding_choices(
    layouts: Sequence[AttentionLayout],
    knobs: set[str],
    gpus: int,
    blocks: int,
    settings_batch: int,
    exclude: Excluder,
    tensor_parallel_blocker: str | None,
    train: bool,
) -> list[tuple[int, int, int, str]]:
    if gpus == 1:
        return [(1, 1, 1, "fsdp")]
    if not knobs & set(SHARDING_KNOBS):
        if settings_batch % gpus:
            exclude("data_parallel", gpus, f"the batch of {settings_batch} does not split over {gpus} replicas")
            return []
        return [(1, 1, gpus, "ddp")]
    choices = []
    for tp in divisors(gpus) if "tensor_parallel" in knobs else [1]:
        if tp > 1 and exclude("tensor_parallel", tp, tensor_parallel_blocker):
            continue
        if exclude("tensor_parallel", tp, tensor_parallel_rule(layouts, tp)):
            continue
        for pp in divisors(gpus // tp) if "pipeline_stages" in knobs else [1]:
            if pp > blocks:
                exclude("pipeline_stages", pp, f"the model has {blocks} block(s) to split into stages")
                continue
            dp = gpus // (tp * pp)
            if pp > 1 and exclude("pipeline_stages", f"{pp} with tp={tp} dp={dp}", pipeline_rule(tp, dp, train)):
                continue
            if settings_batch % dp:
                exclude("data_parallel", dp, f"the batch of {settings_batch} does not split over {dp} replicas")
                continue
            if dp > 1 and "data_parallel" not in knobs:
                exclude("data_parallel", dp, "data parallelism was not allowed by --knobs")
                continue
            modes = ["ddp", "fsdp"] if dp > 1 else ["fsdp"]
            if dp > 1 and tp > 1 and exclude("data_parallel_mode", f"ddp with tp={tp}", DDP_WITH_TP_UNSUPPORTED):
                modes = ["fsdp"]
            choices.extend((tp, pp, dp, mode) for mode in modes)
    return choices


def _layer_options(layout: AttentionLayout, knobs: set[str], mode: str, exclude: Excluder) -> list[LayerOption]:
    prunes = range(layout.num_heads) if "heads" in knobs else [0]
    checkpoints = [""]
    if "checkpoint" in knobs and mode == "train":
        checkpoints += [layout.name]
        for scope, path in (("mlp", layout.mlp), ("block", layout.block)):
            if not exclude("checkpoint", f"{layout.name} {scope}", None if path else f"no {scope} found around it"):
                checkpoints.append(path)
    options = []
    for prune in prunes:
        if exclude("heads", f"{layout.name} prune {prune}", heads_rule(layout, prune, 1)):
            continue
        kept = layout.num_heads - prune
        # Candidates: every smaller divisor of the K/V heads the layer has after pruning.
        current = layout.num_kv_heads if layout.num_kv_heads < layout.num_heads else kept
        kv_values: list[int | None] = [None]
        if "kv_heads" in knobs:
            kv_values += [g for g in divisors(current) if g < current]
        for kv in kv_values:
            if kv is not None and exclude(
                "kv_heads", f"{layout.name} kv {kv} with {kept} heads", kv_heads_rule(layout, kv, kept, 1)
            ):
                continue
            options.extend(LayerOption(prune, kv, checkpoint) for checkpoint in checkpoints)
    return options
