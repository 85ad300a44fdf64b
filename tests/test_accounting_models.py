"""Attention found in models nobody here wrote: transformers GPT-2, Llama (GQA), BERT, eager and
sdpa, with padding and KV-cache decoding; and `--device meta` dry runs up to 70B dimensions."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.measure.accounting import CostCounter, ModuleCost
from attnprof.measure.scopes import ModuleScopes
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.targets.load import load_workload

IMPLEMENTATIONS = ["eager", "sdpa"]
BATCH, SEQ, HIDDEN, HEADS = 2, 7, 32, 4
HEAD_DIM = HIDDEN // HEADS  # 8
PER_PAIR = 4 * HEAD_DIM * HEADS  # 4·D per pair, over 4 query heads: 128
CAUSAL = SEQ * (SEQ + 1) // 2  # 28 pairs per (batch, head)
PADDING = torch.tensor([[1] * SEQ, [1] * 5 + [0] * 2])  # batch 1 has 2 padding tokens at the end


def build(config_class: str, model_class: str, implementation: str, **values: Any) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**values)
    return getattr(transformers, model_class)._from_config(config, attn_implementation=implementation).eval()


def counted(model: nn.Module, **inputs: Any) -> dict[str, ModuleCost]:
    with torch.no_grad(), ModuleScopes(model) as scopes, CostCounter(scopes) as counter:
        model(**inputs)
    return {name: cost for name, cost in counter.per_module.items() if cost.attention}


def llama(implementation: str, layers: int = 2) -> nn.Module:
    return build("LlamaConfig", "LlamaForCausalLM", implementation, hidden_size=HIDDEN, intermediate_size=64,
                 num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=2, vocab_size=100)


def ids() -> torch.Tensor:
    return torch.randint(0, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_llama_gqa_layers(implementation: str) -> None:
    attention = counted(llama(implementation), input_ids=ids())
    assert sorted(attention) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for cost in attention.values():
        (info,) = cost.attention
        assert (info.num_heads, info.num_kv_heads, info.head_dim, info.causal) == (HEADS, 2, HEAD_DIM, True)
        assert info.flops == PER_PAIR * BATCH * CAUSAL  # 128 · 2 · 28 = 7168


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_llama_with_left_padding(implementation: str) -> None:
    left = torch.tensor([[1] * SEQ, [0] * 2 + [1] * 5])
    attention = counted(llama(implementation), input_ids=ids(), attention_mask=left)
    (info,) = attention["model.layers.0.self_attn"].attention
    # batch 0: 28 causal pairs; batch 1: the 5 real tokens see each other causally, 1 + ... + 5 = 15,
    # and the 2 padding queries see no real key before them, 0
    assert info.flops == PER_PAIR * (28 + 15)  # 128 · 43 = 5504


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_llama_kv_cache_decode_and_chunk(implementation: str) -> None:
    model = llama(implementation, layers=1)
    tokens = ids()
    with torch.no_grad():
        cache = model(input_ids=tokens, use_cache=True).past_key_values
    (decode,) = counted(model, input_ids=tokens[:, :1], past_key_values=cache)["model.layers.0.self_attn"].attention
    assert (decode.q_len, decode.kv_len, decode.num_kv_heads) == (1, SEQ + 1, 2)
    assert decode.flops == PER_PAIR * BATCH * (SEQ + 1)  # one query sees all 8 keys: 128 · 2 · 8 = 2048
    with torch.no_grad():
        cache = model(input_ids=tokens, use_cache=True).past_key_values
    (chunk,) = counted(model, input_ids=tokens[:, :3], past_key_values=cache)["model.layers.0.self_attn"].attention
    assert chunk.causal and (chunk.q_len, chunk.kv_len) == (3, SEQ + 3)
    assert chunk.flops == PER_PAIR * BATCH * (8 + 9 + 10)  # after 7 cached keys: 128 · 2 · 27 = 6912


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gpt2_layers(implementation: str) -> None:
    model = build("GPT2Config", "GPT2LMHeadModel", implementation, n_embd=HIDDEN, n_layer=2, n_head=HEADS,
                  vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    attention = counted(model, input_ids=ids())
    assert sorted(attention) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for cost in attention.values():
        (info,) = cost.attention
        assert (info.num_heads, info.num_kv_heads, info.causal) == (HEADS, HEADS, True)
        assert info.flops == PER_PAIR * BATCH * CAUSAL  # 7168


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bert_layers_with_padding(implementation: str) -> None:
    model = build("BertConfig", "BertModel", implementation, hidden_size=HIDDEN, num_hidden_layers=2,
                  num_attention_heads=HEADS, intermediate_size=64, vocab_size=100)
    attention = counted(model, input_ids=ids(), attention_mask=PADDING)
    assert sorted(attention) == ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"]
    for cost in attention.values():
        (info,) = cost.attention
        assert not info.causal and info.num_kv_heads == HEADS
        assert info.flops == PER_PAIR * SEQ * (7 + 5)  # every query sees 7 keys, or 5: 128 · 7 · 12 = 10752


def test_mistral_sliding_window() -> None:
    for implementation in IMPLEMENTATIONS:
        model = build("MistralConfig", "MistralForCausalLM", implementation, hidden_size=HIDDEN,
                      intermediate_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
                      num_key_value_heads=2, vocab_size=100, sliding_window=3)
        (info,) = counted(model, input_ids=ids())["model.layers.0.self_attn"].attention
        assert info.window == 3
        assert info.flops == PER_PAIR * BATCH * (1 + 2 + 3 * 5)  # rows see 1, 2, 3, 3, 3, 3, 3 keys: 4608


# --- profiles and dry runs ----------------------------------------------------------------------


def llama_flops(config: Any, batch: int, seq: int) -> int:
    """Matmul FLOPs of a Llama forward plus causal attention, written out."""
    tokens = batch * seq
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = hidden // heads
    per_layer = (
        2 * tokens * hidden * heads * head_dim  # q_proj
        + 2 * 2 * tokens * hidden * kv_heads * head_dim  # k_proj, v_proj
        + 2 * tokens * heads * head_dim * hidden  # o_proj
        + 3 * 2 * tokens * hidden * config.intermediate_size  # gate, up, down
        + 4 * head_dim * batch * heads * seq * (seq + 1) // 2  # causal attention
    )
    return config.num_hidden_layers * per_layer + 2 * tokens * hidden * config.vocab_size  # + lm_head


def test_profile_totals_carry_attention_share() -> None:
    workload = load_workload("hf:llama")
    profile = run_profile(workload, Settings(batch_size=1, seq_len=32, warmup=0, repeats=1))
    totals = profile.totals
    assert totals.flops == llama_flops(workload.config, 1, 32)
    attention = profile.attention_layers()
    assert totals.attention_flops == sum(layer.attention.flops for layer in attention)
    assert totals.attention_flops_dense == 2 * 4 * 32 * 4 * 32 * 32  # 2 layers · 4·D·H·S² with D 32, H 4
    assert totals.attention_share_flops == pytest.approx(totals.attention_flops / totals.flops)
    attention_ms = sum(layer.self_time_ms or 0.0 for layer in attention)
    assert totals.attention_share_time == pytest.approx(attention_ms / totals.time_ms.median)


@pytest.mark.parametrize("target", ["hf:llama", "hf:gpt2", "hf:bert", "zoo:decoder", "zoo:encoder", "zoo:gpt"])
def test_meta_dry_run_counts_what_a_cpu_run_counts(target: str) -> None:
    settings = {"batch_size": 2, "seq_len": 16, "warmup": 0, "repeats": 1}
    on_cpu = run_profile(load_workload(target), Settings(**settings))
    on_meta = run_profile(load_workload(target), Settings(device="meta", **settings))
    assert on_meta.timing_source == "none" and on_meta.totals.time_ms is None
    assert all(layer.time_ms is None for layer in on_meta.layers)
    assert on_meta.totals.flops == on_cpu.totals.flops
    assert on_meta.totals.attention_flops == on_cpu.totals.attention_flops
    assert [(a.name, a.attention) for a in on_meta.attention_layers()] == [
        (a.name, a.attention) for a in on_cpu.attention_layers()
    ]  # every field alike, the backend (flash) included
    assert on_meta.totals.param_bytes == on_cpu.totals.param_bytes
    assert on_meta.notes == []  # every mask's values were known


def test_cli_dry_run_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["profile", "hf:llama", "--device", "meta", "--batch-size", "1", "--seq-len", "32", "--json", "--no-save"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["timing_source"] == "none" and data["totals"]["time_ms"] is None
    assert data["totals"]["attention_share_time"] is None
    attention = [layer for layer in data["layers"] if layer["kind"] == "attention"]
    assert [layer["name"] for layer in attention] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    assert all(layer["time_ms"] is None and layer["memory_bytes"] > 0 for layer in attention)
    first = attention[0]["attention"]
    assert (first["num_heads"], first["num_kv_heads"], first["head_dim"], first["causal"]) == (4, 2, 32, True)
    assert first["flops"] == 4 * 32 * 4 * 32 * 33 // 2  # 4·D·H·S(S+1)/2 with D 32, H 4, S 32: 270336
    assert data["totals"]["attention_flops"] == 2 * first["flops"]

    train = CliRunner().invoke(app, [*args, "--mode", "train"])
    assert train.exit_code == 0, train.output
    trained = json.loads(train.stdout)
    assert trained["totals"]["flops"] == data["totals"]["flops"]
    assert trained["totals"]["backward_flops"] > 2 * trained["totals"]["flops"]  # 2x, attention 2.5x


LLAMA_70B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
}


def _llama_70b_dir(tmp_path: Path, layers: int) -> Path:
    config = transformers.LlamaConfig(num_hidden_layers=layers, architectures=["LlamaForCausalLM"], **LLAMA_70B)
    config.save_pretrained(tmp_path)
    return tmp_path


def _dry_run_70b(tmp_path: Path, layers: int) -> None:
    workload = load_workload(f"hf:{_llama_70b_dir(tmp_path, layers)}")
    profile = run_profile(workload, Settings(device="meta", batch_size=1, seq_len=128))
    assert profile.totals.flops == llama_flops(workload.config, 1, 128)
    hidden, kv_width, ffn, vocab = 8192, 8 * 128, 28672, 128256
    # per layer: q, o (E²), k, v (E·kv_width), gate/up/down (3·E·F), two norms (2·E); + embeddings, lm_head, norm
    params = layers * (2 * hidden**2 + 2 * hidden * kv_width + 3 * hidden * ffn + 2 * hidden)
    params += 2 * vocab * hidden + hidden
    assert profile.workload.parameter_count == params
    # fp32 estimate, never allocated; buffers count too: rotary inv_freq and its original, 2 · 64 fp32
    assert profile.totals.param_bytes == 4 * params + 2 * 64 * 4
    attention = profile.attention_layers()
    assert len(attention) == layers
    assert {(a.attention.num_heads, a.attention.num_kv_heads, a.attention.causal) for a in attention} == {
        (64, 8, True)
    }
    # the process never came near the hundreds of GB the weights would take
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < 4 * 2**30


def test_llama_70b_dimensions_dry_run_few_layers(tmp_path: Path) -> None:
    _dry_run_70b(tmp_path, layers=2)


@pytest.mark.slow
def test_llama_70b_full_depth_dry_run(tmp_path: Path) -> None:
    _dry_run_70b(tmp_path, layers=80)  # 70.6 B parameters
