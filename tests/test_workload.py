"""Every target form of docs/architecture.md loads, and bad targets fail with the documented exit code."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from attnprof.errors import UsageError, UserCodeError
from attnprof.plans import scope
from attnprof.settings import Settings
from attnprof.targets.load import DEFAULT_TARGET, load_workload
from attnprof.targets.workload import call_user

CPU = torch.device("cpu")


def _run(target: str, batch: int = 2, seq: int = 8) -> object:
    workload = load_workload(target)
    model = workload.build_model(CPU, torch.float32)
    args, kwargs = workload.make_inputs(batch, seq, CPU, torch.float32)
    with torch.no_grad():
        return model(*args, **kwargs)


def test_default_target_is_the_zoo_decoder() -> None:
    assert load_workload(None).target == DEFAULT_TARGET == "zoo:decoder"


@pytest.mark.parametrize("name", ["decoder", "encoder", "gpt"])
def test_zoo_workloads_run(name: str) -> None:
    out = _run(f"zoo:{name}")
    assert isinstance(out, torch.Tensor) and out.shape[:2] == (2, 8)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_builtin_hf_configs_run_offline(name: str) -> None:
    out = _run(f"hf:{name}")
    assert hasattr(out, "logits") or hasattr(out, "last_hidden_state")


def test_llama_builtin_config_has_grouped_query_attention() -> None:
    config = load_workload("hf:llama").config
    assert config.num_key_value_heads < config.num_attention_heads


def test_hf_local_config_dir(tmp_path: Path) -> None:
    load_workload("hf:llama").config.save_pretrained(tmp_path)
    workload = load_workload(f"hf:{tmp_path}")
    assert workload.config.model_type == "llama"
    assert hasattr(_run(f"hf:{tmp_path}"), "logits")


def test_model_file_with_transformer_encoder(models_dir: Path) -> None:
    workload = load_workload(str(models_dir / "encoder_model.py"))
    assert workload.defaults["seq_len"] == 16 and workload.loss_fn is not None
    assert _run(str(models_dir / "encoder_model.py")).shape == (2, 8, 32)


def test_model_file_with_factory_name(models_dir: Path) -> None:
    model = load_workload(f"{models_dir / 'encoder_model.py'}:make_small").build_model(CPU, torch.float32)
    assert isinstance(model, torch.nn.Sequential)


def test_package_module_factory(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(models_dir.parent))
    workload = load_workload("models.encoder_model:make_small")
    assert isinstance(workload.build_model(CPU, torch.float32), torch.nn.Sequential)
    sys.modules.pop("models.encoder_model", None)


def test_fingerprint_depends_on_architecture_and_settings() -> None:
    decoder, encoder = load_workload("zoo:decoder"), load_workload("zoo:encoder")
    settings = Settings(batch_size=2, seq_len=8)
    assert decoder.fingerprint(settings) == load_workload("zoo:decoder").fingerprint(settings)
    assert decoder.fingerprint(settings) != encoder.fingerprint(settings)
    assert decoder.fingerprint(settings) != decoder.fingerprint(Settings(batch_size=2, seq_len=16))
    assert decoder.fingerprint(settings) == decoder.fingerprint(Settings(batch_size=2, seq_len=8, repeats=3))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing_file.py", "no such file"),
        ("zoo:nope", "unknown zoo workload"),
        ("hf:definitely-not-a-model", "unknown hf: model"),
        ("no_such_pkg.mod:factory", "no such file or importable module"),
        ("a b c", "is not a target"),
        ("models/x.py:not-a-name", "must be a Python name"),
    ],
)
def test_bad_targets_are_usage_errors(target: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        load_workload(target)
    assert caught.value.exit_code == 2


def test_file_without_build_model(models_dir: Path) -> None:
    with pytest.raises(UsageError, match="build_model"):
        load_workload(str(models_dir / "no_build.py"))


def test_syntax_error_is_user_code_error(models_dir: Path) -> None:
    with pytest.raises(UserCodeError) as caught:
        load_workload(str(models_dir / "syntax_error.py"))
    assert caught.value.exit_code == 3
    assert "syntax_error.py" in caught.value.user_traceback


def test_example_inputs_of_wrong_type(models_dir: Path) -> None:
    workload = load_workload(str(models_dir / "bad_inputs.py"))
    with pytest.raises(UsageError, match="example_inputs"):
        workload.make_inputs(1, 4, CPU, torch.float32)


def test_example_inputs_returning_a_list_of_two_tensors_gives_two_arguments(tmp_path: Path) -> None:
    model_file = tmp_path / "two_inputs.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Difference(nn.Module):\n"
        "    def forward(self, a, b):\n"
        "        return a - b\n\n"
        "def build_model(device, dtype):\n"
        "    return Difference()\n\n"
        "def example_inputs(batch_size, seq_len, device, dtype):\n"
        "    return [torch.ones(batch_size, seq_len), torch.zeros(batch_size, seq_len)]\n"
    )
    args, kwargs = load_workload(str(model_file)).make_inputs(2, 3, CPU, torch.float32)
    assert len(args) == 2 and kwargs == {}
    assert torch.equal(_run(str(model_file), batch=2, seq=3), torch.ones(2, 3))


def test_user_traceback_leaves_out_attnprof_wrappers_around_user_code() -> None:
    """A forward that attnprof wraps (here in a plan's forward scope) fails: the traceback shows
    the user's frame, not attnprof's, whichever attnprof package the wrapper lives in."""

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("broken forward")

    model = Broken()
    scope.add_forward_scope(model, contextlib.nullcontext)
    with pytest.raises(UserCodeError) as caught:
        call_user(model, torch.zeros(1), what="the model's forward")
    assert 'raise ValueError("broken forward")' in caught.value.user_traceback
    assert scope.__file__ not in caught.value.user_traceback
