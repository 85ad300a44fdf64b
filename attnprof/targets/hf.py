"""`hf:` targets: transformers models built from a config with random weights.

Nothing is downloaded: `hf:gpt2`, `hf:llama` and `hf:bert` use small built-in configs, and any
other name must be a local folder holding a config.json (or a config already in the local
Hugging Face cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.targets.workload import Inputs, Workload, call_user
from attnprof.targets.zoo import next_token_loss, random_token_ids

# Small configs of real architectures: fast on a CPU, yet every structural feature is there
# (GPT-2's fused Conv1D, Llama's grouped-query attention and gated MLP, BERT's encoder).
BUILTIN_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 1000, "n_positions": 2048,
                         "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("LlamaConfig", {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 344, "vocab_size": 1000,
                              "max_position_embeddings": 4096}),
    "bert": ("BertConfig", {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
                            "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048}),
}


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    try:
        import transformers
    except ImportError:
        raise EnvironmentUnsupported(
            "hf: targets need the transformers package: pip install 'attnprof[hf]'"
        ) from None
    return transformers


def load_config(name: str) -> Any:
    transformers = _transformers()
    if name in BUILTIN_CONFIGS:
        class_name, values = BUILTIN_CONFIGS[name]
        return getattr(transformers, class_name)(**values)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UsageError(f"hf:{name}: the folder has no config.json")
        return call_user(transformers.AutoConfig.from_pretrained, name, what=f"reading hf:{name} config")
    try:
        return transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        raise UsageError(
            f"unknown hf: model {name!r}: give a local folder with a config.json, or one of "
            f"{', '.join(sorted(BUILTIN_CONFIGS))} (attnprof never downloads)"
        ) from None


def _is_causal_lm(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in architectures)
    return config.model_type not in ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "t5")


def load_hf(target: str) -> Workload:
    name = target.removeprefix("hf:").strip()
    if not name:
        raise UsageError("hf: needs a model name or a local config folder, e.g. hf:llama")
    config = load_config(name)
    transformers = _transformers()
    causal = _is_causal_lm(config)
    auto_class = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        with torch.device(device):
            torch.manual_seed(0)
            model = call_user(auto_class.from_config, config, attn_implementation="sdpa",
                              what=f"building hf:{name}")
        return model.to(dtype=dtype)

    def make_inputs(batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        if max_positions is not None and seq_len > max_positions:
            raise UsageError(f"--seq-len {seq_len} exceeds hf:{name}'s max positions {max_positions}")
        ids = random_token_ids(batch_size, seq_len, config.vocab_size, device)
        kwargs: dict[str, Any] = {"input_ids": ids}
        if device.type != "meta":  # all ones says nothing, and transformers reads its values (.all())
            kwargs["attention_mask"] = torch.ones_like(ids)
        if config.model_type == "bert":
            kwargs["token_type_ids"] = torch.zeros_like(ids)
        return (), kwargs

    loss_fn = None
    if causal:

        def loss_fn(output: Any, inputs: Inputs) -> torch.Tensor:
            return next_token_loss(output.logits, inputs[1]["input_ids"])

    label = Path(name).name if Path(name).is_dir() else name
    return Workload(target, f"hf-{label}", build_model, make_inputs, loss_fn, {"batch_size": 2, "seq_len": 128},
                    config=config)
