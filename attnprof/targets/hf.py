"""`hf:` targets: transformers models built from a config with random weights.

Nothing is downloaded and no code a config names is run: `hf:gpt2`, `hf:llama` and `hf:bert`
use small built-in configs, and any other name must be a local folder holding a config.json (or
a config already in the local Hugging Face cache) of a model type transformers implements.

Which model: the config's `architectures` name the class (a causal LM, a classifier, ...); a
config without them gets the base model of its type, and the run says so on stderr. What it is
fed follows the class's forward: token ids for text (and decoder ids for an encoder-decoder),
pixel_values sized by the config for vision, input_features / input_values for audio, with an
all-ones attention_mask wherever the forward takes one. `--seq-len` is the text length (and the
number of encoder frames for raw-audio models); images and spectrograms have the sizes their
config fixes.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprof import backends
from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.targets.workload import Inputs, Workload, call_user
from attnprof.targets.zoo import next_token_loss, random_token_ids

# Small configs of real architectures: fast on a CPU, yet every structural feature is there
# (GPT-2's fused Conv1D, Llama's grouped-query attention and gated MLP, BERT's encoder).
BUILTIN_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 1000, "n_positions": 2048,
                         "bos_token_id": 0, "eos_token_id": 0, "architectures": ["GPT2LMHeadModel"]}),
    "llama": ("LlamaConfig", {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 344, "vocab_size": 1000,
                              "max_position_embeddings": 4096, "architectures": ["LlamaForCausalLM"]}),
    "bert": ("BertConfig", {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
                            "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048,
                            "architectures": ["BertModel"]}),
}

# transformers' `attn_implementation` values a run may ask for ("auto": the class's default,
# sdpa where the class supports it, else eager). settings.ATTN_IMPLEMENTATIONS lists the same.
_SUPPORT_FLAGS = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    try:
        with _quiet_stdout():
            import transformers
    except ImportError:
        raise EnvironmentUnsupported(
            "hf: targets need the transformers package: pip install 'attnprof[hf]'"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Whatever transformers prints goes to stderr: stdout carries attnprof's data (--json)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _read_config_json(name: str, path: Path) -> dict[str, Any]:
    """config.json as a dict, refused (exit 2) when it is unreadable, names remote code or a model
    type this transformers does not implement — before transformers sees it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"hf:{name}: {path} is not a readable JSON config ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"hf:{name}: {path} must hold a JSON object")
    if data.get("auto_map"):
        raise UsageError(
            f"hf:{name}: the config needs remote code (auto_map names {', '.join(sorted(data['auto_map']))}); "
            "attnprof never runs code a config names"
        )
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UsageError(f"hf:{name}: {path} names no model_type")
    transformers = _transformers()
    if model_type not in transformers.CONFIG_MAPPING:
        raise UsageError(
            f"hf:{name}: unknown model type {model_type!r} "
            f"(transformers {transformers.__version__} does not implement it)"
        )
    return data


def load_config(name: str) -> Any:
    transformers = _transformers()
    if name in BUILTIN_CONFIGS:
        class_name, values = BUILTIN_CONFIGS[name]
        return getattr(transformers, class_name)(**values)
    folder = Path(name)
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise UsageError(f"hf:{name}: the folder has no config.json")
        _read_config_json(name, config_file)
        try:
            with _quiet_stdout():
                return transformers.AutoConfig.from_pretrained(name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"hf:{name}: transformers cannot read config.json ({exc})") from None
    try:
        with _quiet_stdout():
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError):
        raise UsageError(
            f"unknown hf: model {name!r}: give a local folder with a config.json, or one of "
            f"{', '.join(sorted(BUILTIN_CONFIGS))} (attnprof never downloads)"
        ) from None
    if getattr(config, "auto_map", None):
        raise UsageError(f"hf:{name}: the config needs remote code (auto_map); attnprof never runs code a config names")
    return config


def model_class(config: Any, name: str) -> tuple[type, str | None]:
    """The class to build and, when the config does not name one, a line saying which was chosen."""
    transformers = _transformers()
    architectures = list(getattr(config, "architectures", None) or [])
    for architecture in architectures:
        found = getattr(transformers, architecture, None)
        if isinstance(found, type):
            return found, None
    if architectures:
        raise UsageError(
            f"hf:{name}: transformers {transformers.__version__} has no class {architectures[0]} (config.architectures)"
        )
    try:
        base = transformers.AutoModel._model_mapping[type(config)]
    except KeyError:
        raise UsageError(f"hf:{name}: transformers has no base model for type {config.model_type!r}") from None
    return base, (f"hf:{name}: the config names no architectures; profiling {base.__name__}, "
                  f"the base model of type {config.model_type!r}")


# A config's attention implementation as loaded (by id: configs are unhashable), kept while a
# run has chosen another one; forgotten with the config.
_LOADED_IMPLEMENTATION: dict[int, str | None] = {}


def select_attn_implementation(workload: Workload, implementation: str, backend: str = backends.AUTO) -> None:
    """Build the workload's transformers model with this attention implementation ("auto": the
    implementation the backend runs through where it is not an SDPA kernel, else the class's own
    default). The choice lives on the config, where transformers keeps it; each build copies the
    config, so the choice of one run never leaks into the next."""
    entry = backends.get(backend) if backend != backends.AUTO else None
    is_hf = workload.target.startswith("hf:") and workload.config is not None
    if implementation != "auto" and not is_hf:
        raise UsageError(f"--attn-implementation {implementation} applies to hf: targets only")
    if entry is not None and entry.hf_only and not is_hf:
        raise UsageError(f"--backend {backend} is transformers' {entry.hf_attn_implementation} attention: "
                         "hf: targets only")
    if implementation == "auto" and entry is not None and entry.sdp_backend is None:
        implementation = entry.hf_attn_implementation
    if not is_hf:
        return
    config = workload.config
    if implementation == "auto":
        if id(config) in _LOADED_IMPLEMENTATION:  # an earlier run chose one: back to the config's own
            config._attn_implementation = _LOADED_IMPLEMENTATION.pop(id(config))
        return
    cls, _ = model_class(workload.config, workload.target.removeprefix("hf:"))
    supported = getattr(cls, _SUPPORT_FLAGS.get(implementation, ""), True)
    if supported is False:
        raise UsageError(f"{workload.target}: {cls.__name__} does not support --attn-implementation {implementation}")
    if id(config) not in _LOADED_IMPLEMENTATION:
        _LOADED_IMPLEMENTATION[id(config)] = config._attn_implementation
        weakref.finalize(config, _LOADED_IMPLEMENTATION.pop, id(config), None)
    config._attn_implementation = implementation


def attn_implementations(workload: Workload) -> tuple[str, ...]:
    """The transformers attention implementations an hf: target's class supports; () for other targets."""
    if not workload.target.startswith("hf:") or workload.config is None:
        return ()
    cls, _ = model_class(workload.config, workload.target.removeprefix("hf:"))
    return tuple(name for name in ("eager", "sdpa", "flex_attention")
                 if getattr(cls, _SUPPORT_FLAGS.get(name, ""), True) is not False)


def _forward_parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.forward).parameters)


def _image_size(config: Any) -> tuple[int, int]:
    size = getattr(config, "image_size", 224)
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    if isinstance(size, dict):
        return int(size.get("height", 224)), int(size.get("width", 224))
    return int(size), int(size)


def _raw_audio_samples(config: Any, frames: int) -> int:
    """Samples that a raw-audio encoder (Wav2Vec2, HuBERT, ...) turns into exactly `frames`
    frames: each conv layer maps L to (L - kernel) // stride + 1, inverted layer by layer."""
    length = frames
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        length = (length - 1) * stride + kernel
    return length


class _Inputs:
    """The example inputs of one transformers class, read from its forward and its config."""

    def __init__(self, cls: type, config: Any, name: str) -> None:
        self.config, self.name = config, name
        self.parameters = _forward_parameters(cls)
        self.main = getattr(cls, "main_input_name", "input_ids")
        self.text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        dual = hasattr(config, "vision_config") and hasattr(config, "text_config") and not any(
            hasattr(config, field) for field in ("image_token_id", "image_token_index")
        )
        self.wants_ids = "input_ids" in self.parameters and (self.main == "input_ids" or dual)
        self.wants_pixels = "pixel_values" in self.parameters and (self.main == "pixel_values" or dual)
        self.decoder = bool(getattr(config, "is_encoder_decoder", False)) and "decoder_input_ids" in self.parameters
        self.max_positions = self._max_positions()

    def _max_positions(self) -> int | None:
        for field in ("max_position_embeddings", "n_positions", "max_target_positions"):
            value = getattr(self.text, field, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _vocab(self) -> int:
        vocab = getattr(self.text, "vocab_size", None) or getattr(self.config, "vocab_size", None)
        if not isinstance(vocab, int):
            raise UsageError(f"hf:{self.name}: the config states no vocab_size for token inputs")
        return vocab

    def make(self, batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        if (self.wants_ids or self.decoder) and self.max_positions is not None and seq_len > self.max_positions:
            raise UsageError(f"--seq-len {seq_len} exceeds hf:{self.name}'s max positions {self.max_positions}")
        kwargs: dict[str, Any] = {}
        if self.wants_ids:
            ids = random_token_ids(batch_size, seq_len, self._vocab(), device)
            kwargs["input_ids"] = ids
            if "attention_mask" in self.parameters:
                kwargs["attention_mask"] = torch.ones_like(ids)
            if "token_type_ids" in self.parameters and getattr(self.config, "type_vocab_size", 0):
                kwargs["token_type_ids"] = torch.zeros_like(ids)
        if self.wants_pixels:
            vision = getattr(self.config, "vision_config", self.config)
            height, width = _image_size(vision)
            channels = getattr(vision, "num_channels", 3)
            kwargs["pixel_values"] = torch.randn(batch_size, channels, height, width, device=device, dtype=dtype)
        if self.main == "input_features":
            kwargs["input_features"] = self._features(batch_size, seq_len, device, dtype)
        if self.main == "input_values":
            samples = _raw_audio_samples(self.config, seq_len)
            kwargs["input_values"] = torch.randn(batch_size, samples, device=device, dtype=dtype)
        if self.decoder:
            kwargs["decoder_input_ids"] = random_token_ids(batch_size, seq_len, self._vocab(), device)
        if not kwargs:
            raise UsageError(f"hf:{self.name}: attnprof cannot make inputs for {self.main!r}")
        return (), kwargs

    def _features(self, batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        config = self.config
        mel_bins = getattr(config, "num_mel_bins", None)
        if mel_bins is not None:  # Whisper-style (batch, mel bins, frames); the encoder fixes the frames
            frames = 2 * config.max_source_positions if getattr(config, "max_source_positions", None) else seq_len
            return torch.randn(batch_size, mel_bins, frames, device=device, dtype=dtype)
        per_channel = getattr(config, "input_feat_per_channel", None) or getattr(config, "feature_size", None)
        if per_channel is None:
            raise UsageError(f"hf:{self.name}: the config states no feature size for input_features")
        channels = getattr(config, "input_channels", 1)
        return torch.randn(batch_size, seq_len, per_channel * channels, device=device, dtype=dtype)


def _is_causal_lm(cls: type) -> bool:
    return cls.__name__.endswith(("ForCausalLM", "LMHeadModel"))


def load_hf(target: str) -> Workload:
    name = target.removeprefix("hf:").strip()
    if not name:
        raise UsageError("hf: needs a model name or a local config folder, e.g. hf:llama")
    config = load_config(name)
    cls, chosen = model_class(config, name)
    if chosen is not None:
        print(chosen, file=sys.stderr)
    inputs = _Inputs(cls, config, name)

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        with torch.device(device), _quiet_stdout():
            torch.manual_seed(0)
            # A copy: transformers' set_attn_implementation writes into the model's config.
            model = call_user(cls._from_config, copy.deepcopy(config), what=f"building hf:{name}")
        return model.to(dtype=dtype)

    loss_fn = None
    if _is_causal_lm(cls):

        def loss_fn(output: Any, inputs: Inputs) -> torch.Tensor:
            return next_token_loss(output.logits, inputs[1]["input_ids"])

    label = Path(name).name if Path(name).is_dir() else name
    return Workload(target, f"hf-{label}", build_model, inputs.make, loss_fn, {"batch_size": 2, "seq_len": 128},
                    config=config)

