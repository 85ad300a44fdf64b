"""The Python API (attnprof.api) on real models: a plain module and a transformers model from a
small config; its Profile is the record the CLI saves, and round-trips through save and load."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from apply_models import VOCAB, Block, llama
from torch import nn

import attnprof
from attnprof.errors import UsageError
from attnprof.gate.records import CheckResult
from attnprof.plans.records import PlanChoices
from attnprof.profiling.records import Profile as SavedProfile
from attnprof.profiling.records import load_profile
from attnprof.report.profile import LAYER_COLUMNS
from attnprof.store import to_json_dict

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"warmup": 1, "repeats": 3}


def _block() -> nn.Module:
    """Pre-norm block: causal SDPA attention, 4 query heads of 8 and 2 K/V heads, and an MLP."""
    torch.manual_seed(0)
    return Block(manual=False, kv_heads=2)


def test_profile_of_a_plain_module_is_the_record_the_cli_saves(tmp_path):
    model = _block().train()  # the profile runs it in eval; its own mode is kept
    x = torch.randn(2, 16, 32)
    profile = attnprof.profile(model, x, **FAST)
    assert isinstance(profile, SavedProfile) and model.training
    assert (profile.settings.batch_size, profile.settings.seq_len, profile.settings.mode) == (2, 16, "infer")
    (attention,) = profile.attention_layers()
    assert attention.name == "attn" and attention.attention is not None
    # Causal attention, 4 query heads of 8 over 16 positions: 4·B·H·D·S(S+1)/2 useful FLOPs.
    assert attention.attention.flops == 4 * 2 * 4 * 8 * 16 * 17 // 2
    assert profile.totals.time_ms is not None and len(profile.totals.time_ms.samples) == 3
    assert profile.workload.target == "python:apply_models.Block"
    path = tmp_path / "profile.json"
    profile.save(path)
    assert to_json_dict(load_profile(path)) == to_json_dict(profile)
    assert to_json_dict(attnprof.Profile.load(path)) == to_json_dict(profile)
    # The same file the CLI writes: the report command reads it.
    from typer.testing import CliRunner

    from attnprof.cli.app import app

    shown = CliRunner().invoke(app, ["report", str(path), "--format", "csv"])
    assert shown.exit_code == 0 and "attention_flops" in shown.output


def test_to_dataframe_has_the_csv_columns_with_attention_filled_in():
    profile = attnprof.profile(_block(), torch.randn(1, 8, 32), **FAST)
    frame = profile.to_dataframe()
    assert list(frame.columns) == list(LAYER_COLUMNS)
    assert {"attention_flops", "num_heads", "num_kv_heads", "head_dim", "attention_backend"} <= set(frame.columns)
    rows = frame.set_index("name")
    assert rows.loc["attn", "num_heads"] == 4 and rows.loc["attn", "num_kv_heads"] == 2
    assert rows.loc["attn", "head_dim"] == 8
    assert rows.loc["attn", "attention_flops"] == profile.layer("attn").attention.flops
    assert rows["attention_flops"].isna().sum() == len(frame) - 1  # only the attention layer has them


def test_repr_html_renders_the_report_in_a_frame():
    profile = attnprof.profile(_block(), torch.randn(1, 8, 32), **FAST)
    html = profile._repr_html_()
    assert html.startswith("<iframe srcdoc=") and html.endswith("</iframe>")
    document = re.search(r'srcdoc="([^"]*)"', html)
    assert document is not None and "&lt;svg" in document.group(1) and "attnprof profile: Block" in document.group(1)


def test_train_mode_runs_backward_and_leaves_the_gradients_as_they_were():
    model = _block()
    x = torch.randn(2, 8, 32)
    target = torch.randn(2, 8, 32)
    kept = torch.ones_like(model.attn.o_proj.weight)
    model.attn.o_proj.weight.grad = kept
    calls = []

    def loss_fn(output, inputs):
        calls.append(inputs is x)
        return F.mse_loss(output, target)

    profile = attnprof.profile(model, x, mode="train", loss_fn=loss_fn, **FAST)
    assert profile.settings.mode == "train" and calls and all(calls)
    assert profile.totals.backward_flops > 0
    assert profile.layer("attn").backward_time_ms is not None
    assert model.attn.o_proj.weight.grad is kept and model.attn.q_proj.weight.grad is None


def test_profile_of_a_transformers_model():
    model = llama(num_heads=4, num_kv_heads=2)
    input_ids = torch.randint(0, VOCAB, (2, 12))
    profile = attnprof.profile(model, {"input_ids": input_ids}, **FAST)
    layers = profile.attention_layers()
    assert [layer.name for layer in layers] == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for layer in layers:
        assert layer.attention is not None
        assert (layer.attention.num_heads, layer.attention.num_kv_heads, layer.attention.head_dim) == (4, 2, 8)
    assert (profile.settings.batch_size, profile.settings.seq_len) == (2, 12)
    assert profile.workload.name == "LlamaForCausalLM"
    assert profile.to_dataframe().set_index("name").loc["model.layers.0.self_attn", "num_kv_heads"] == 2


def _global_hooks() -> int:
    from torch.nn.modules import module

    return sum(len(getattr(module, name)) for name in dir(module) if name.startswith("_global_") and
               isinstance(getattr(module, name), dict))


def test_profile_steps_in_a_training_loop():
    model = _block().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [torch.randn(4, 8, 32) for _ in range(3)]
    hooks_before = _global_hooks()
    steps_run = 0
    with attnprof.profile_steps(model, warmup=1, repeats=4) as steps:
        for step in range(12):
            loss = model(batches[step % 3]).square().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps.step()
            steps_run += 1
            if step == 6:  # warm-up, counting, the hooks' warm-up and 4 timed steps are done
                assert _global_hooks() == hooks_before
    profile = steps.profile
    assert steps_run == 12 and _global_hooks() == hooks_before
    assert profile.settings.mode == "train" and (profile.settings.batch_size, profile.settings.seq_len) == (4, 8)
    assert profile.totals.time_ms is not None and len(profile.totals.time_ms.samples) == 4
    assert profile.layer("attn").time_ms is not None and profile.layer("attn").backward_time_ms is not None
    assert profile.totals.backward_flops > 0
    # the counting step counted the same FLOPs as attnprof.profile's counting step
    assert profile.totals.flops == attnprof.profile(model, batches[0], mode="train", **FAST).totals.flops


def test_profile_steps_stopped_early_and_too_early():
    model = _block().eval()
    with attnprof.profile_steps(model, warmup=0, repeats=10) as steps:
        for _ in range(4):  # the counting step, the hooks' warm-up, 2 timed steps
            with torch.no_grad():
                model(torch.randn(1, 8, 32))
            steps.step()
    assert steps.profile.settings.mode == "infer" and len(steps.profile.totals.time_ms.samples) == 2
    with attnprof.profile_steps(model, warmup=3) as too_few:
        too_few.step()
    with pytest.raises(UsageError, match="1 step"):
        _ = too_few.profile


def test_apply_leaves_the_thread_count_alone_unless_asked():
    plan = attnprof.load_plan(Path(__file__).parent / "data" / "written_before_reorganisation" / "plan.json")
    before = torch.get_num_threads()
    wanted = before + 1
    plan = dataclasses.replace(plan, choices=PlanChoices(threads=wanted))
    model = _block()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attnprof.apply(model, plan, torch.randn(1, 8, 32))
    assert torch.get_num_threads() == before
    assert any(f"torch.set_num_threads({wanted})" in str(w.message) for w in caught)
    try:
        attnprof.apply(model, plan, torch.randn(1, 8, 32), set_threads=True)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_check_judges_profiles_as_compare_does(tmp_path):
    profile = attnprof.profile(_block(), torch.randn(1, 8, 32), **FAST)
    profile.save(tmp_path / "baseline.json")
    result = attnprof.check(profile, tmp_path / "baseline.json")
    assert isinstance(result, CheckResult) and result.command == "compare"
    # 3 repeats are too few for a timing verdict; every exact metric matches itself
    assert result.verdict in ("pass", "inconclusive") and not result.failures()
    assert {m.status for m in result.metrics if m.kind == "exact"} == {"pass"}
    assert result.baseline == str(tmp_path / "baseline.json")
    assert result.hostname == profile.machine.hostname and result.created
    attnprof.save(result, tmp_path / "check.json")
    assert json.loads((tmp_path / "check.json").read_text())["verdict"] == result.verdict


@pytest.mark.slow
def test_tune_a_module_object_leaves_it_as_it_was():
    model = _block().eval()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plan = attnprof.tune(model, torch.randn(2, 16, 32), budget=["memory=1GiB"], knobs="backend", top_k=1,
                         warmup=1, repeats=3)
    assert plan.choices.backend in ("auto", "math", "flash") and "batch_size" not in plan.knobs
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    with pytest.raises(UsageError, match="micro-batch"):
        attnprof.tune(model, torch.randn(2, 16, 32), knobs="batch_size")


def _readme_python_examples() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.mark.slow
def test_the_readme_python_api_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    examples = _readme_python_examples()
    assert examples
    namespace: dict[str, object] = {}
    for code in examples:  # one after another, as a reader would run them
        exec(compile(code, str(README), "exec"), namespace)
