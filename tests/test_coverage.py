"""Coverage of the FLOP counter on real transformers models from small configs: soft-capped
attention, expert matmuls, convolution backward, relative-position attention, the layout a
module declares, and the share of time in ops no formula counts. Every expected count is
written out from the model's sizes here, never taken from attnprof."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnprof.measure.accounting import CostCounter
from attnprof.measure.flop_formulas import Coverage, is_counted, op_flops
from attnprof.measure.layout import declared_layout, reconcile
from attnprof.measure.scopes import ModuleScopes
from attnprof.profiling.records import UncountedOp
from attnprof.report.profile import uncounted_line
from attnprof.settings import Settings
from attnprof.targets.workload import Workload

aten = torch.ops.aten


@dataclass
class Counted:
    forward: int
    backward: int
    attention: int  # forward attention FLOPs (useful)
    counter: CostCounter


def count(model: nn.Module, inputs: dict[str, Any], train: bool = False) -> Counted:
    model.train(train)
    with ModuleScopes(model) as scopes, CostCounter(scopes) as counter:
        if train:
            output = model(**inputs)
            loss = sum(value.float().square().mean() for value in output.values()
                       if isinstance(value, torch.Tensor) and value.is_floating_point())
            loss.backward()
        else:
            with torch.no_grad():
                model(**inputs)
    costs = counter.per_module.values()
    return Counted(
        forward=sum(c.flops for c in costs),
        backward=sum(c.backward_flops for c in costs),
        attention=sum(a.flops for c in costs for a in c.attention),
        counter=counter,
    )


def attention_calls(counted: Counted) -> dict[str, Any]:
    return {name: cost.attention[0] for name, cost in counted.counter.per_module.items() if cost.attention}


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def causal_pairs(seq: int) -> int:
    return seq * (seq + 1) // 2


def ids(batch: int, seq: int, vocab: int = 100) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


# --- attention through elementwise ops ---------------------------------------------------


def test_gemma2_eager_soft_capped_attention_is_found_and_counted_once() -> None:
    batch, seq, hidden, heads, kv_heads, head_dim, ffn, vocab, layers = 2, 8, 64, 4, 2, 16, 128, 100, 2
    config = transformers.Gemma2Config(
        num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, intermediate_size=ffn, vocab_size=vocab, attn_implementation="eager",
    )
    assert config.attn_logit_softcapping  # tanh soft-cap between QKᵀ and softmax
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config)
    counted = count(model, {"input_ids": ids(batch, seq)})
    tokens = batch * seq
    attention = 4 * head_dim * batch * heads * causal_pairs(seq)
    per_layer = (linear(tokens, hidden, heads * head_dim) + 2 * linear(tokens, hidden, kv_heads * head_dim)
                 + linear(tokens, heads * head_dim, hidden) + 3 * linear(tokens, hidden, ffn))
    assert counted.attention == layers * attention
    assert counted.forward == layers * (per_layer + attention) + linear(tokens, hidden, vocab)
    calls = attention_calls(counted)
    assert sorted(calls) == [f"model.layers.{i}.self_attn" for i in range(layers)]
    assert all(call.backend == "eager" and call.causal for call in calls.values())


def test_scores_scaled_capped_and_biased_by_hand_are_attention() -> None:
    """Temperature, tanh cap, ALiBi-style bias and a multiplicative mask between the matmuls."""

    class Capped(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            scores = q @ k.transpose(-1, -2) / 8.0
            scores = 30.0 * torch.tanh(scores / 30.0)
            scores = scores + bias
            scores = scores * torch.ones_like(scores)
            return scores.softmax(-1) @ v

    batch, heads, seq, dim = 2, 3, 10, 8
    q, k, v = (torch.randn(batch, heads, seq, dim) for _ in range(3))
    distance = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]
    bias = -0.5 * distance.abs().float()  # ALiBi: finite, hides nothing
    counted = count(Capped(), {"q": q, "k": k, "v": v, "bias": bias})
    assert counted.attention == 4 * dim * batch * heads * seq * seq
    assert counted.forward == counted.attention  # the two matmuls are the attention, not counted again


# --- formulas ------------------------------------------------------------------------------


def test_mixtral_expert_matmuls_are_counted() -> None:
    batch, seq, hidden, heads, kv_heads, ffn, experts, top_k, vocab = 2, 8, 64, 4, 2, 96, 4, 2, 100
    config = transformers.MixtralConfig(
        num_hidden_layers=1, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=ffn, vocab_size=vocab, num_local_experts=experts, num_experts_per_tok=top_k,
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config)
    counted = count(model, {"input_ids": ids(batch, seq)}, train=True)
    tokens, head_dim = batch * seq, hidden // heads
    attention = 4 * head_dim * batch * heads * causal_pairs(seq)
    projections = (2 * linear(tokens, hidden, hidden) + 2 * linear(tokens, hidden, kv_heads * head_dim))
    router = linear(tokens, hidden, experts)
    expert_ffn = 3 * linear(tokens * top_k, hidden, ffn)  # every token through top_k experts' gate, up, down
    plain = projections + router + expert_ffn + linear(tokens, hidden, vocab)
    assert counted.forward == plain + attention
    # Backward: an input and a weight gradient per product, 2.5x forward for attention.
    assert counted.backward == 2 * plain + 5 * attention // 2
    assert "aten::_grouped_mm" not in counted.counter.coverage.uncounted


def _conv_train_backward(plain: int, attention: int, first_conv: int) -> int:
    """Each product's input and weight gradient repeat its forward, except the first convolution,
    whose input (pixels, spectrogram) needs no gradient; attention backward is 2.5x forward."""
    return 2 * plain - first_conv + 5 * attention // 2


def test_vit_train_counts_patch_convolution_backward() -> None:
    batch, hidden, heads, ffn, image, patch, channels = 2, 32, 2, 64, 32, 8, 3
    config = transformers.ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                                    intermediate_size=ffn, image_size=image, patch_size=patch, num_channels=channels)
    torch.manual_seed(0)
    model = transformers.ViTModel(config)
    pixels = torch.randn(batch, channels, image, image)
    counted = count(model, {"pixel_values": pixels}, train=True)
    patches = (image // patch) ** 2
    tokens, seq = batch * (patches + 1), patches + 1
    conv = 2 * (batch * hidden * patches) * (channels * patch * patch)
    layer = 4 * linear(tokens, hidden, hidden) + linear(tokens, hidden, ffn) + linear(tokens, ffn, hidden)
    pooler = linear(batch, hidden, hidden)
    attention = 4 * (hidden // heads) * batch * heads * seq * seq
    plain = conv + layer + pooler
    assert counted.forward == plain + attention
    assert counted.backward == _conv_train_backward(plain, attention, conv)


def test_whisper_train_counts_convolution_front_end_backward() -> None:
    batch, d_model, heads, ffn, mel, source, seq = 2, 32, 4, 64, 8, 16, 8
    config = transformers.WhisperConfig(
        d_model=d_model, encoder_layers=1, decoder_layers=1, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, vocab_size=100, num_mel_bins=mel,
        max_source_positions=source, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.WhisperModel(config)
    features = torch.randn(batch, mel, 2 * source)
    counted = count(model, {"input_features": features, "decoder_input_ids": ids(batch, seq)}, train=True)
    head_dim = d_model // heads
    conv1 = 2 * (batch * d_model * 2 * source) * (mel * 3)  # kernel 3, padding 1: 2·source frames
    conv2 = 2 * (batch * d_model * source) * (d_model * 3)  # stride 2: source frames
    enc, dec = batch * source, batch * seq
    encoder = 4 * linear(enc, d_model, d_model) + linear(enc, d_model, ffn) + linear(enc, ffn, d_model)
    decoder = (4 * linear(dec, d_model, d_model)  # self-attention q, k, v, o
               + 2 * linear(dec, d_model, d_model) + 2 * linear(enc, d_model, d_model)  # cross: q, o; k, v
               + linear(dec, d_model, ffn) + linear(dec, ffn, d_model))
    attention = 4 * head_dim * batch * heads * (source * source + causal_pairs(seq) + seq * source)
    plain = conv1 + conv2 + encoder + decoder
    assert counted.forward == plain + attention
    assert counted.backward == _conv_train_backward(plain, attention, conv1)


def test_grouped_convolution_backward_counts_each_gradient_once() -> None:
    """torch's own convolution_backward formula counts a grouped conv's weight gradient `groups` times."""
    conv = nn.Conv2d(8, 16, kernel_size=3, padding=1, groups=4)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    with ModuleScopes(conv) as scopes, CostCounter(scopes) as counter:
        conv(x).sum().backward()
    forward = 2 * (2 * 16 * 6 * 6) * (8 // 4 * 3 * 3)
    cost = counter.per_module[""]
    assert (cost.flops, cost.backward_flops) == (forward, 2 * forward)


def test_transposed_convolution_counts_each_input_element() -> None:
    conv = nn.ConvTranspose1d(4, 6, kernel_size=3, stride=2)
    x = torch.randn(2, 4, 5)
    with ModuleScopes(conv) as scopes, CostCounter(scopes) as counter:
        conv(x)
    assert counter.per_module[""].flops == 2 * (2 * 4 * 5) * (6 * 3)


def test_grouped_mm_formula_reads_offsets() -> None:
    a, b = torch.randn(10, 4), torch.randn(3, 4, 5)
    offs = torch.tensor([2, 6, 8], dtype=torch.int32)  # rows 8 and 9 belong to no group
    assert op_flops(aten._grouped_mm.default, (a, b, offs), {}, None) == 2 * 8 * 4 * 5
    grad_b = op_flops(aten._grouped_mm.default, (a.t(), torch.randn(10, 5), offs), {}, None)
    assert grad_b == 2 * 4 * 8 * 5  # the contraction split by the same offsets


def test_deberta_v2_train_keeps_relative_position_backward_products() -> None:
    config = transformers.DebertaV2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=2,
        max_relative_positions=16,
    )
    torch.manual_seed(0)
    model = transformers.DebertaV2Model(config)
    inputs = {"input_ids": ids(2, 8), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    # torch's counter counts every matmul at its dense cost: the reference for everything but
    # attention, whose backward attnprof books as 2.5x forward instead of the 2x of its four products.
    with FlopCounterMode(display=False) as reference:
        output = model(**inputs).last_hidden_state
        forward = reference.get_total_flops()
        output.square().mean().backward()
    backward = reference.get_total_flops() - forward
    model.zero_grad()
    counted = count(model, inputs, train=True)
    assert counted.attention == 4 * 8 * 2 * 4 * 8 * 8 * 2  # all pairs, 2 layers
    assert counted.forward == forward
    assert counted.backward == backward - 2 * counted.attention + 5 * counted.attention // 2


# --- what is not counted ----------------------------------------------------------------------


class SpectralMixer(nn.Module):
    """FNet-style token mixing with an FFT, which no FLOP formula covers."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.fft.fft2(x).real)


def test_ops_without_a_formula_are_listed_with_their_time() -> None:
    counted = count(SpectralMixer(), {"x": torch.randn(4, 64, 16)})
    coverage = counted.counter.coverage
    assert counted.forward == linear(4 * 64, 16, 16)
    fft = [name for name in coverage.uncounted if "fft" in name]
    assert fft and all(coverage.uncounted[name].calls == 1 for name in fft)
    assert all(coverage.uncounted[name].seconds > 0 for name in fft)
    assert "aten::addmm" not in coverage.uncounted and "aten::view" not in coverage.uncounted
    assert coverage.total_seconds >= sum(entry.seconds for entry in coverage.uncounted.values())


def test_flop_free_ops_are_not_uncounted() -> None:
    for op in (aten.add.Tensor, aten.view.default, aten._to_copy.default, aten.native_layer_norm.default,
               aten.embedding.default, aten._softmax.default, aten.sum.dim_IntList, aten.index.Tensor,
               aten.mm.default, aten._grouped_mm.default, aten.convolution_backward.default,
               aten._scaled_dot_product_flash_attention_for_cpu.default):
        assert is_counted(op), op
    for op in (aten._fft_r2c.default, aten.linalg_solve_ex.default, aten._cdist_forward.default):
        assert not is_counted(op), op


def test_profile_totals_and_terminal_name_uncounted_ops(tmp_path: Any) -> None:
    from attnprof.profiling.run import run_profile

    def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return SpectralMixer().to(device=device, dtype=dtype)

    def inputs(batch: int, seq: int, device: torch.device, dtype: torch.dtype) -> Any:
        return (torch.randn(batch, seq, 16, device=device, dtype=dtype),), {}

    workload = Workload("spectral", "spectral", build, inputs)
    profile = run_profile(workload, Settings(batch_size=2, seq_len=256, warmup=0, repeats=1))
    totals = profile.totals
    names = [op.op for op in totals.uncounted_ops]
    assert any("fft" in name for name in names)
    assert totals.uncounted_share is not None and 0 < totals.uncounted_share <= 1
    assert all(op.time_ms is not None and op.share is not None and op.calls >= 1 for op in totals.uncounted_ops)
    shares = [op.share for op in totals.uncounted_ops]
    assert shares == sorted(shares, reverse=True)
    # The terminal names them above 1% of op time, and stays silent below.
    totals.uncounted_ops = [UncountedOp("aten::_fft_c2c", 2, 1.5, 0.25)]
    totals.uncounted_share = 0.25
    line = uncounted_line(profile)
    assert line is not None and "25.0% of op time" in line and "aten::_fft_c2c 25.0%" in line
    totals.uncounted_ops[0].share = totals.uncounted_share = 0.005
    assert uncounted_line(profile) is None
    totals.uncounted_ops = []
    assert uncounted_line(profile) is None


def test_dry_run_coverage_lists_calls_untimed() -> None:
    coverage = Coverage()
    x = torch.empty(8, 8, device="meta")
    coverage.run(lambda func, args, kwargs: func(*args, **kwargs), aten._fft_r2c.default, (x, [1], 0, True), {})
    assert not coverage.timed and coverage.uncounted["aten::_fft_r2c"].calls == 1


# --- layout from the module ------------------------------------------------------------------


def _layout(counted: Counted, model: nn.Module) -> dict[str, Any]:
    modules = dict(model.named_modules())
    return {name: reconcile(info, declared_layout(modules[name])) for name, info in attention_calls(counted).items()}


def test_falcon_multi_query_layout_has_one_kv_head() -> None:
    config = transformers.FalconConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, multi_query=True,
                                       new_decoder_architecture=False, vocab_size=100, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.FalconForCausalLM(config)
    counted = count(model, {"input_ids": ids(2, 6)})
    ((info, note),) = _layout(counted, model).values()
    assert (info.num_heads, info.num_kv_heads, info.head_dim, info.q_len, info.kv_len) == (4, 1, 16, 6, 6)
    assert note is None and info.flops == 4 * 16 * 2 * 4 * causal_pairs(6)


def test_padded_decode_step_layout_is_the_models() -> None:
    heads, kv_heads, hidden = 8, 2, 64
    config = transformers.Qwen2Config(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads, intermediate_size=64, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        cache = model(input_ids=ids(2, 5), attention_mask=mask, use_cache=True).past_key_values
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    counted = count(model, {"input_ids": ids(2, 1), "attention_mask": step_mask, "past_key_values": cache})
    ((info, note),) = _layout(counted, model).values()
    assert (info.num_heads, info.num_kv_heads, info.q_len, info.kv_len, info.causal) == (heads, kv_heads, 1, 6, True)
    assert note is None
    head_dim = hidden // heads
    assert info.flops == 4 * head_dim * heads * (4 + 6)  # the padded sequence sees its 4 real keys


def test_layout_disagreement_is_a_note() -> None:
    class Declares(nn.Module):
        num_heads, head_dim = 6, 8

    counted = count(nn.Identity(), {"input": torch.zeros(1)})
    assert not attention_calls(counted)
    from attnprof.measure.records import AttentionInfo

    kernel = AttentionInfo(num_heads=4, num_kv_heads=4, head_dim=8, q_len=5, kv_len=5, causal=False, window=None,
                           backend="flash", flops=1, flops_dense=1, batch_size=1)
    info, note = reconcile(kernel, declared_layout(Declares()))
    assert info == kernel and note is not None and "6 heads declared" in note


@pytest.mark.slow
def test_flex_attention_is_counted_from_its_block_mask() -> None:
    config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, vocab_size=100, attn_implementation="flex_attention")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    from attnprof.measure.attention_ops import flex_attention_uncompiled

    with flex_attention_uncompiled():
        counted = count(model, {"input_ids": ids(2, 8), "attention_mask": mask})
    ((info),) = attention_calls(counted).values()
    # Left padding: the first sequence's real tokens are causal among themselves (6 of 8).
    assert info.backend == "flex" and info.flops == 4 * 16 * 4 * (causal_pairs(6) + causal_pairs(8))


def test_report_lists_uncounted_ops_only_when_there_are_some() -> None:
    from samples import SAMPLES

    from attnprof.report import formats
    from attnprof.report.adapter import ReportOptions
    from attnprof.report.registry import adapter_for_record

    profile = SAMPLES["profile"]()
    adapter = adapter_for_record(profile)
    render = formats.FORMATS["markdown"].render
    assert "Ops without a FLOP formula" not in render(adapter, profile, ReportOptions())
    profile.totals.uncounted_ops = [UncountedOp("aten::_fft_r2c", 3, 2.0, 0.125)]
    profile.totals.uncounted_share = 0.125
    markdown = render(adapter, profile, ReportOptions())
    assert "Ops without a FLOP formula" in markdown and "aten::_fft_r2c" in markdown
    assert "12.5% of op time in 1 op(s) without a FLOP formula" in markdown


def test_deepseek_v3_attention_with_wider_keys_than_values() -> None:
    """Multi-head latent attention: q·k over nope + rope dims (16), p·v over v_head_dim (12)."""
    heads, rope, nope, value = 4, 8, 8, 12
    config = transformers.DeepseekV3Config(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=128, vocab_size=100, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=rope,
        qk_nope_head_dim=nope, v_head_dim=value, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config)
    counted = count(model, {"input_ids": ids(2, 8)})
    ((info, note),) = _layout(counted, model).values()
    assert counted.attention == 2 * (rope + nope + value) * 2 * heads * causal_pairs(8)
    assert (info.num_heads, info.head_dim, note) == (heads, rope + nope, None)
