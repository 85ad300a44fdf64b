"""Train-mode attribution on real models: every module's backward is its own, read from the
autograd graph (keyword calls, inputs needing no gradient, in-place ops on outputs, modules
called twice, shared parameters, activation checkpointing), and nothing is lost or counted twice.

The equalities checked on every model:
  - each nn.Linear / GPT-2 Conv1D: backward = 2 x forward, 1 x when its input needs no gradient;
  - each attention layer: attention backward = 2.5 x its forward attention FLOPs, and its own
    backward is that plus 2 x its own other matmuls;
  - the root's own forward FLOPs are its own ops only;
  - per-module sums equal the whole step counted with no attribution at all, and equal
    FlopCounterMode's forward and
    backward totals once attention is taken out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from attnprof.measure.accounting import CostCounter, ModuleCost
from attnprof.measure.attention_math import backward_flops
from attnprof.measure.scopes import ModuleScopes
from attnprof.profiling.run import default_loss  # what a train step backpropagates

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
VOCAB, HIDDEN, HEADS, BATCH, SEQ = 64, 32, 4, 2, 8


def _step(model: nn.Module, inputs: Inputs) -> None:
    args, kwargs = inputs
    model.zero_grad(set_to_none=True)
    default_loss(model(*args, **kwargs)).backward()


@dataclass
class LinearCall:
    forward: int  # FLOPs of its matmul
    input_needs_grad: bool
    weight_needs_grad: bool


def _linear_calls(model: nn.Module, inputs: Inputs) -> dict[str, list[LinearCall]]:
    """Every Linear / Conv1D call with its analytic FLOPs, seen by hooks on those modules only."""
    calls: dict[str, list[LinearCall]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            outputs = module.out_features
        elif type(module).__name__ == "Conv1D":  # GPT-2: weight is (in, out)
            outputs = module.weight.shape[1]
        else:
            continue

        def record(module: nn.Module, args: tuple, output: Any, name: str = name, outputs: int = outputs) -> None:
            (x,) = args
            calls.setdefault(name, []).append(
                LinearCall(2 * x.numel() * outputs, x.requires_grad, module.weight.requires_grad))

        handles.append(module.register_forward_hook(record))
    try:
        _step(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _costs(model: nn.Module, inputs: Inputs, scoped: nn.Module | None = None) -> dict[str, ModuleCost]:
    with ModuleScopes(scoped if scoped is not None else model) as scopes, CostCounter(scopes) as counter:
        _step(model, inputs)
    return dict(counter.per_module)


def _attention(cost: ModuleCost) -> int:
    return sum(info.flops for info in cost.attention)


def check_train_step(model: nn.Module, inputs: Inputs) -> dict[str, ModuleCost]:
    """The equalities of the module docstring on one train step; returns the per-module costs."""
    costs = _costs(model, inputs)
    for name, calls in _linear_calls(model, inputs).items():
        forward = sum(call.forward for call in calls)
        backward = sum(call.forward * (call.input_needs_grad + call.weight_needs_grad) for call in calls)
        assert (costs[name].flops, costs[name].backward_flops) == (forward, backward), name
        assert costs[name].recompute_flops == 0, name
    attention = {name: cost for name, cost in costs.items() if cost.attention}
    assert attention, "the model ran attention"
    for name, cost in attention.items():
        assert cost.backward_attention_flops == backward_flops(_attention(cost)), name
        # Its own other matmuls (nn.MultiheadAttention's projections): 2x, 1x where an input needs no grad.
        own_matmuls = cost.flops - _attention(cost)
        assert own_matmuls <= cost.backward_flops - cost.backward_attention_flops <= 2 * own_matmuls, name
    # Everything in one scope: the same step, counted with no attribution at all.
    whole = _costs(model, inputs, scoped=nn.Identity())[""]
    assert sum(cost.flops for cost in costs.values()) == whole.flops
    assert sum(cost.backward_flops for cost in costs.values()) == whole.backward_flops
    assert sum(_attention(cost) for cost in costs.values()) == _attention(whole)
    # FlopCounterMode's own formulas for the rest of the step, forward and backward apart.
    args, kwargs = inputs
    forward_counter, backward_counter = FlopCounterMode(display=False), FlopCounterMode(display=False)
    model.zero_grad(set_to_none=True)
    with forward_counter:
        loss = default_loss(model(*args, **kwargs))
    with backward_counter:
        loss.backward()
    assert whole.flops - _attention(whole) == _without_attention(forward_counter)
    assert whole.backward_flops - whole.backward_attention_flops == _without_attention(backward_counter)
    return costs


def _without_attention(counter: FlopCounterMode) -> int:
    """FlopCounterMode's total less attention: its SDPA kernels (the CPU flash one counts 0, others
    dense) and batched matmuls (eager attention and SDPA's math path; these models have no others)."""
    counts = counter.get_flop_counts()["Global"]
    attention = ("scaled_dot_product", "aten.bmm", "aten.baddbmm")
    return sum(flops for op, flops in counts.items() if not any(word in str(op) for word in attention))


def _hf(config_class: str, model_class: str, implementation: str = "sdpa", **values: Any) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**values)
    return getattr(transformers, model_class)._from_config(config, attn_implementation=implementation).train()


def _ids() -> Inputs:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return (), {"input_ids": ids}


DECODER = {"hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": HEADS,
           "num_key_value_heads": 2, "vocab_size": VOCAB}


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_llama_keyword_called_attention_owns_its_backward(implementation: str) -> None:
    model = _hf("LlamaConfig", "LlamaForCausalLM", implementation, **DECODER)
    costs = check_train_step(model, _ids())
    for layer in (0, 1):  # transformers calls self_attn(hidden_states=...): keywords only
        attention = costs[f"model.layers.{layer}.self_attn"]
        assert attention.backward_flops == backward_flops(_attention(attention)) > 0
        assert costs[f"model.layers.{layer}"].backward_flops == 0  # the decoder layer runs no matmul itself
    assert costs[""].flops == costs[""].backward_flops == 0


def test_qwen2_attention_backward_is_two_and_a_half_times_forward() -> None:
    model = _hf("Qwen2Config", "Qwen2ForCausalLM", **DECODER)
    costs = check_train_step(model, _ids())
    attention = costs["model.layers.0.self_attn"]
    assert _attention(attention) == 4 * (HIDDEN // HEADS) * HEADS * BATCH * SEQ * (SEQ + 1) // 2
    assert attention.backward_flops == 5 * _attention(attention) // 2


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_gpt2_shared_embedding_and_conv1d(implementation: str) -> None:
    model = _hf("GPT2Config", "GPT2LMHeadModel", implementation, n_embd=HIDDEN, n_layer=2, n_head=HEADS,
                vocab_size=VOCAB, n_positions=64)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one parameter, two users
    costs = check_train_step(model, _ids())
    # The tied weight's gradient from the logits is lm_head's backward, not the embedding's.
    assert costs["lm_head"].backward_flops == 2 * costs["lm_head"].flops
    assert costs["transformer.wte"].flops == costs["transformer.wte"].backward_flops == 0


def test_bert_encoder() -> None:
    model = _hf("BertConfig", "BertModel", hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                intermediate_size=64, vocab_size=VOCAB)
    costs = check_train_step(model, _ids())
    assert {name for name, cost in costs.items() if cost.attention} == {
        "encoder.layer.0.attention.self", "encoder.layer.1.attention.self"}


def test_torch_transformer_multihead_attention_books_its_own_projections() -> None:
    torch.manual_seed(0)
    model = nn.Transformer(d_model=HIDDEN, nhead=HEADS, num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=64, dropout=0.0, batch_first=True).train()
    source, target = torch.randn(BATCH, SEQ, HIDDEN), torch.randn(BATCH, SEQ - 2, HIDDEN)
    costs = check_train_step(model, ((source, target), {}))
    attention = costs["encoder.layers.0.self_attn"]
    # nn.MultiheadAttention runs its in/out projections itself (F.linear). Backward: attention 2.5x,
    # the output projection 2x, the input projection 1x (its input, the source, needs no grad).
    in_projection, out_projection = 2 * BATCH * SEQ * HIDDEN * 3 * HIDDEN, 2 * BATCH * SEQ * HIDDEN * HIDDEN
    assert attention.flops == in_projection + out_projection + _attention(attention)
    assert attention.backward_flops == backward_flops(_attention(attention)) + in_projection + 2 * out_projection
    assert {name for name, cost in costs.items() if cost.attention} == {
        "encoder.layers.0.self_attn", "decoder.layers.0.self_attn", "decoder.layers.0.multihead_attn"}


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, seq, HIDDEN))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        self.attn = SelfAttention()
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 64), nn.GELU(), nn.Linear(64, HIDDEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x=self.norm(x))  # a keyword call
        return self.mlp(x)


class TinyLM(nn.Module):
    """Embedding, blocks, and an output projection the root computes itself with the tied weight."""

    def __init__(self, frozen_embedding: bool = False, residual_in_place: bool = False, twice: bool = False,
                 checkpointed: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.embed.weight.requires_grad_(not frozen_embedding)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.residual_in_place, self.twice, self.checkpointed = residual_in_place, twice, checkpointed

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            for _ in range(2 if self.twice else 1):
                if self.checkpointed is not None:
                    y = checkpoint(block, x, use_reentrant=self.checkpointed == "reentrant")
                else:
                    y = block(x)
                if self.residual_in_place:
                    y += x  # in place on a module's output
                x = y
        return x @ self.embed.weight.t()  # the root's own matmul


def _tiny_inputs() -> Inputs:
    return (torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1)),), {}


def _root_matmul() -> int:
    return 2 * BATCH * SEQ * HIDDEN * VOCAB


def test_frozen_embedding_weight_gradients_are_the_layers_backward_never_forward() -> None:
    torch.manual_seed(0)
    model = TinyLM(frozen_embedding=True)
    costs = check_train_step(model, _tiny_inputs())
    qkv = costs["blocks.0.attn.qkv"]
    assert qkv.backward_flops == 2 * qkv.flops  # its input (a LayerNorm output) needs grad
    first = costs["blocks.0.mlp.0"]
    assert first.backward_flops == 2 * first.flops
    # The root's own forward is its output matmul alone; its backward only the input gradient
    # (the tied weight is frozen).
    assert costs[""].flops == _root_matmul()
    assert costs[""].backward_flops == _root_matmul()


def test_linear_whose_input_needs_no_grad_has_backward_equal_to_forward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN))
    x = torch.randn(BATCH, HIDDEN)  # needs no grad: the first layer computes only its weight gradient
    costs = _costs(model, ((x,), {}))
    assert costs["0"].backward_flops == costs["0"].flops == 2 * BATCH * HIDDEN * HIDDEN
    assert costs["2"].backward_flops == 2 * costs["2"].flops
    assert costs[""].flops == costs[""].backward_flops == 0


def test_in_place_residual_on_a_module_output_trains_and_is_attributed() -> None:
    torch.manual_seed(0)
    costs = check_train_step(TinyLM(residual_in_place=True), _tiny_inputs())
    assert costs[""].flops == _root_matmul() and costs[""].backward_flops == 2 * _root_matmul()


def test_module_called_twice_books_both_calls() -> None:
    torch.manual_seed(0)
    once = _costs(TinyLM(), _tiny_inputs())
    torch.manual_seed(0)
    twice = check_train_step(TinyLM(twice=True), _tiny_inputs())
    for name in ("blocks.0.attn", "blocks.0.attn.qkv", "blocks.1.mlp.2"):
        assert twice[name].flops == 2 * once[name].flops
        assert twice[name].backward_flops == 2 * once[name].backward_flops
    assert len(twice["blocks.0.attn"].attention) == 2


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_checkpointed_blocks_count_recompute_apart(mode: str) -> None:
    torch.manual_seed(0)
    plain = _costs(TinyLM(), _tiny_inputs())
    torch.manual_seed(0)
    model = TinyLM(checkpointed=mode)
    with torch.utils.checkpoint.set_checkpoint_early_stop(False):
        costs = _costs(model, _tiny_inputs())
    for name, cost in plain.items():
        # Forward is one forward, backward the gradient work: as without checkpointing.
        assert (costs[name].flops, costs[name].backward_flops) == (cost.flops, cost.backward_flops), name
        assert len(costs[name].attention) == len(cost.attention), name  # the recompute is no second call
        expected = cost.flops if name.startswith("blocks.") else 0  # only the blocks run again
        assert costs[name].recompute_flops == expected, name


def test_checkpoint_early_stop_recomputes_no_more_than_forward() -> None:
    torch.manual_seed(0)
    costs = _costs(TinyLM(checkpointed="non-reentrant"), _tiny_inputs())
    assert sum(cost.recompute_flops for cost in costs.values()) > 0
    for name, cost in costs.items():
        assert cost.recompute_flops <= cost.flops, name
        if name.endswith(("qkv", "mlp.0", "mlp.2", ".out")):
            assert cost.backward_flops == 2 * cost.flops, name


@pytest.mark.parametrize("reentrant", [True, False])
def test_transformers_activation_checkpointing(reentrant: bool) -> None:
    model = _hf("LlamaConfig", "LlamaForCausalLM", **DECODER)
    plain = _costs(model, _ids())
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # use_cache is switched off for checkpointing
        costs = _costs(model, _ids())
    for name, cost in plain.items():
        assert (costs[name].flops, costs[name].backward_flops) == (cost.flops, cost.backward_flops), name
    attention = costs["model.layers.0.self_attn"]
    assert 0 < attention.recompute_flops <= attention.flops
    assert costs["lm_head"].recompute_flops == 0


def test_no_wrapper_is_inserted_into_the_graph() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    seen: list[str] = []
    with ModuleScopes(model):
        output = model(*_tiny_inputs()[0])
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        seen.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    assert seen and not any("BackwardHook" in name for name in seen)



ARCHITECTURES = {  # transformers models whose train steps broke or misattributed with module backward hooks
    "falcon": ("FalconConfig", "FalconForCausalLM",  # adds to a module's output in place
               {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": HEADS, "vocab_size": VOCAB}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**DECODER, "sliding_window": 4}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {**DECODER, "head_dim": 8, "sliding_window": 4}),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"hidden_size": HIDDEN, "intermediate_size": 64,
                                                           "num_hidden_layers": 2, "num_attention_heads": HEADS,
                                                           "vocab_size": VOCAB}),
    "clip-text": ("CLIPTextConfig", "CLIPTextModel", {"hidden_size": HIDDEN, "intermediate_size": 64,
                                                      "num_hidden_layers": 2, "num_attention_heads": HEADS,
                                                      "vocab_size": VOCAB}),
}


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_more_architectures(architecture: str, implementation: str) -> None:
    config_class, model_class, values = ARCHITECTURES[architecture]
    costs = check_train_step(_hf(config_class, model_class, implementation, **values), _ids())
    assert len([cost for cost in costs.values() if cost.attention]) == 2


def test_t5_encoder_decoder() -> None:
    model = _hf("T5Config", "T5ForConditionalGeneration", d_model=HIDDEN, d_ff=64, num_layers=2, num_heads=HEADS,
                d_kv=HIDDEN // HEADS, vocab_size=VOCAB)
    ids = _ids()[1]["input_ids"]
    costs = check_train_step(model, ((), {"input_ids": ids, "decoder_input_ids": ids}))
    assert len([cost for cost in costs.values() if cost.attention]) == 6  # encoder self, decoder self and cross
