"""`hf:` targets across families (vision, encoder-decoder, a config without architectures,
eager-only attention), dry runs with attention masks, module targets from the current folder,
and the bad inputs an hf: target can meet. Expected FLOPs are written out from the config sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import transformers
from typer.testing import CliRunner

from attnprof.cli.app import app

REPO = Path(__file__).resolve().parents[1]
RUN = ["--batch-size", "2", "--seq-len", "8", "--repeats", "1", "--warmup", "0", "--no-save", "--json"]
BATCH, SEQ = 2, 8


def _folder(tmp_path: Path, name: str, config: Any) -> Path:
    folder = tmp_path / name
    config.save_pretrained(folder)
    return folder


def _profile(runner: CliRunner, target: str, *extra: str) -> tuple[dict[str, Any], str]:
    result = runner.invoke(app, ["profile", target, *RUN, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr  # stdout is the JSON and nothing else


def _attention(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {layer["name"]: layer["attention"] for layer in profile["layers"] if layer["attention"]}


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def causal_pairs(seq: int) -> int:
    return seq * (seq + 1) // 2


T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 4,
      "vocab_size": 100}
BART = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "vocab_size": 100,
        "max_position_embeddings": 64}


def _encoder_decoder_flops(d_model: int, ffn: int, heads: int, head_dim: int) -> tuple[int, int]:
    """(all FLOPs, attention FLOPs) of one encoder and one decoder layer on BATCH x SEQ tokens both sides."""
    tokens = BATCH * SEQ
    inner = heads * head_dim
    encoder = 4 * linear(tokens, d_model, inner) + linear(tokens, d_model, ffn) + linear(tokens, ffn, d_model)
    decoder = 8 * linear(tokens, d_model, inner) + linear(tokens, d_model, ffn) + linear(tokens, ffn, d_model)
    attention = 4 * head_dim * BATCH * heads * (SEQ * SEQ + causal_pairs(SEQ) + SEQ * SEQ)
    return encoder + decoder + attention, attention


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_t5_folder_gets_decoder_inputs(runner: CliRunner, tmp_path: Path, device: str) -> None:
    profile, stderr = _profile(runner, f"hf:{_folder(tmp_path, 't5', transformers.T5Config(**T5))}",
                               "--device", device)
    total, attention = _encoder_decoder_flops(32, 64, 4, 8)
    assert profile["totals"]["attention_flops"] == attention
    assert profile["totals"]["flops"] == total
    layers = _attention(profile)
    assert layers["decoder.block.0.layer.0.SelfAttention"]["causal"]
    assert not layers["encoder.block.0.layer.0.SelfAttention"]["causal"]
    assert "T5Model" in stderr  # no architectures in the config: the class used is named


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bart_without_architectures_builds_the_base_model(runner: CliRunner, tmp_path: Path, device: str) -> None:
    config = transformers.BartConfig(**BART)
    assert not config.architectures
    profile, stderr = _profile(runner, f"hf:{_folder(tmp_path, 'bart', config)}", "--device", device)
    expected_parameters = sum(p.numel() for p in transformers.BartModel(config).parameters())
    assert profile["workload"]["parameter_count"] == expected_parameters
    assert "BartModel" in stderr and "base model" in stderr
    total, attention = _encoder_decoder_flops(32, 64, 4, 8)
    assert (profile["totals"]["flops"], profile["totals"]["attention_flops"]) == (total, attention)
    assert set(_attention(profile)) == {"encoder.layers.0.self_attn", "decoder.layers.0.self_attn",
                                        "decoder.layers.0.encoder_attn"}


def test_vit_folder_gets_pixel_values(runner: CliRunner, tmp_path: Path) -> None:
    hidden, heads, ffn, image, patch = 32, 2, 64, 32, 8
    config = transformers.ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                                    intermediate_size=ffn, image_size=image, patch_size=patch)
    profile, _ = _profile(runner, f"hf:{_folder(tmp_path, 'vit', config)}")
    seq = (image // patch) ** 2 + 1
    ((attention),) = _attention(profile).values()
    assert (attention["num_heads"], attention["q_len"], attention["head_dim"]) == (heads, seq, hidden // heads)
    assert attention["flops"] == 4 * (hidden // heads) * BATCH * heads * seq * seq
    tokens = BATCH * seq
    conv = 2 * (BATCH * hidden * (seq - 1)) * (3 * patch * patch)
    layer = 4 * linear(tokens, hidden, hidden) + linear(tokens, hidden, ffn) + linear(tokens, ffn, hidden)
    assert profile["totals"]["flops"] == conv + layer + linear(BATCH, hidden, hidden) + attention["flops"]


GEMMA2 = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 16, "intermediate_size": 128, "vocab_size": 100, "architectures": ["Gemma2ForCausalLM"]}


def test_gemma2_folder_with_eager_attention(runner: CliRunner, tmp_path: Path) -> None:
    folder = _folder(tmp_path, "gemma2", transformers.Gemma2Config(**GEMMA2))
    profile, _ = _profile(runner, f"hf:{folder}", "--attn-implementation", "eager")
    assert profile["settings"]["attn_implementation"] == "eager"
    ((attention),) = _attention(profile).values()
    assert attention["backend"] == "eager" and attention["num_kv_heads"] == 2
    assert attention["flops"] == 4 * 16 * BATCH * 4 * causal_pairs(SEQ)
    refused = runner.invoke(app, ["profile", f"hf:{folder}", *RUN, "--attn-implementation", "sdpa"])
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "Gemma2ForCausalLM does not support --attn-implementation sdpa" in refused.stderr


def test_attn_implementation_needs_an_hf_target(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "zoo:decoder", *RUN, "--attn-implementation", "eager"])
    assert result.exit_code == 2 and "applies to hf: targets" in result.stderr
    result = runner.invoke(app, ["profile", "hf:llama", *RUN, "--attn-implementation", "fast"])
    assert result.exit_code == 2 and "--attn-implementation must be one of" in result.stderr


def _one_line_refusal(runner: CliRunner, target: str, message: str) -> None:
    result = runner.invoke(app, ["profile", target, *RUN])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_unknown_model_type_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_family", "hidden_size": 8}))
    _one_line_refusal(runner, f"hf:{folder}", "unknown model type 'no_such_family'")


def test_folder_without_config_json_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_refusal(runner, f"hf:{tmp_path / 'empty'}", "has no config.json")


def test_config_needing_remote_code_is_refused_without_running_it(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "modeling_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"},
    }))
    _one_line_refusal(runner, f"hf:{folder}", "needs remote code")
    assert not marker.exists()


def test_config_json_that_is_not_json_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    _one_line_refusal(runner, f"hf:{folder}", "not a readable JSON config")


# --- dry runs with masks built by the user's inputs -----------------------------------------

PADDED_ROBERTA = """
    import torch, transformers

    CONFIG = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, vocab_size=100, max_position_embeddings=40)

    def build_model(device, dtype):
        with torch.device(device):
            return transformers.RobertaModel(CONFIG).to(dtype)

    def example_inputs(batch_size, seq_len, device, dtype):
        lengths = torch.tensor([seq_len, seq_len - 3], device=device)
        mask = (torch.arange(seq_len, device=device)[None, :] < lengths[:, None]).long()
        return {"input_ids": torch.full((2, seq_len), 5, device=device), "attention_mask": mask}
"""

LEFT_PADDED_QWEN2 = """
    import torch, transformers

    CONFIG = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=100)

    def build_model(device, dtype):
        with torch.device(device):
            return transformers.Qwen2ForCausalLM(CONFIG).to(dtype)

    def example_inputs(batch_size, seq_len, device, dtype):
        mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # a CPU tensor, whatever the device
        return {"input_ids": torch.zeros(2, 5, dtype=torch.long, device=device), "attention_mask": mask}
"""

DECODE_STEP = """
    import torch, transformers

    CONFIG = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=100)

    def build_model(device, dtype):
        with torch.device(device):
            return transformers.Qwen2ForCausalLM(CONFIG).to(dtype)

    def example_inputs(batch_size, seq_len, device, dtype):
        cache = transformers.DynamicCache(config=CONFIG)
        past = torch.zeros(2, 2, 6, 8, device=device)
        cache.update(past, past.clone(), 0)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], device=device)
        return {"input_ids": torch.zeros(2, 1, dtype=torch.long, device=device), "attention_mask": mask,
                "past_key_values": cache}
"""


def _model_file(tmp_path: Path, source: str) -> str:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_padded_roberta_dry_run_is_exact(runner: CliRunner, tmp_path: Path) -> None:
    profile, _ = _profile(runner, _model_file(tmp_path, PADDED_ROBERTA), "--device", "meta")
    # Every query (padding too) sees the unpadded keys of its sequence: 8 and 5.
    assert profile["totals"]["attention_flops"] == 4 * 8 * 4 * SEQ * (8 + 5)
    assert not profile["notes"]


def test_left_padded_qwen2_dry_run_is_exact(runner: CliRunner, tmp_path: Path) -> None:
    profile, _ = _profile(runner, _model_file(tmp_path, LEFT_PADDED_QWEN2), "--device", "meta")
    # Causal among real tokens: 3 of 5 in the first sequence, all 5 in the second.
    assert profile["totals"]["attention_flops"] == 4 * 8 * 8 * (causal_pairs(3) + causal_pairs(5))
    assert not profile["notes"]


def test_decode_step_dry_run_is_exact_with_the_models_layout(runner: CliRunner, tmp_path: Path) -> None:
    profile, _ = _profile(runner, _model_file(tmp_path, DECODE_STEP), "--device", "meta")
    ((attention),) = _attention(profile).values()
    assert (attention["num_heads"], attention["num_kv_heads"], attention["q_len"], attention["kv_len"]) == (8, 2, 1, 7)
    assert attention["flops"] == 4 * 8 * 8 * (5 + 7)
    assert not profile["notes"]


def test_dry_run_reading_a_computed_value_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    source = """
        import torch

        class ReadsItsOutput(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(4, 4)

            def forward(self, x):
                y = self.proj(x)
                return y * float(y.sum())

        def build_model(device, dtype):
            return ReadsItsOutput().to(device=device, dtype=dtype)

        def example_inputs(batch_size, seq_len, device, dtype):
            return (torch.randn(batch_size, 4, device=device, dtype=dtype),)
    """
    result = runner.invoke(app, ["profile", _model_file(tmp_path, source), *RUN, "--device", "meta"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "--device meta: the model reads a value it computed" in result.stderr


# --- module targets from the current folder -------------------------------------------------


def test_module_target_importable_from_the_current_folder(tmp_path: Path) -> None:
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent("""
        import torch

        def factory(device, dtype):
            return torch.nn.Linear(8, 8).to(device=device, dtype=dtype)

        def example_inputs(batch_size, seq_len, device, dtype):
            return (torch.randn(batch_size, 8, device=device, dtype=dtype),)
    """))
    # The console script's sys.path starts with its own folder, not the current one (unlike
    # `python -m`): run a launcher script from another folder, as the installed script runs.
    launcher = tmp_path / "bin" / "attnprof_launcher.py"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nfrom attnprof.cli.app import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, str(launcher), "profile", "mypkg.models:factory", *RUN, "--device", "meta"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["flops"] == linear(BATCH, 8, 8)


def test_audio_and_dual_encoder_folders_get_their_inputs(runner: CliRunner, tmp_path: Path) -> None:
    wav2vec2 = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
    )
    profile, _ = _profile(runner, f"hf:{_folder(tmp_path, 'wav2vec2', wav2vec2)}")
    ((attention),) = _attention(profile).values()
    assert (attention["q_len"], attention["kv_len"]) == (SEQ, SEQ)  # raw samples sized to --seq-len frames

    whisper = transformers.WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, num_mel_bins=8, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    layers = _attention(_profile(runner, f"hf:{_folder(tmp_path, 'whisper', whisper)}")[0])
    assert (layers["encoder.layers.0.self_attn"]["q_len"], layers["decoder.layers.0.self_attn"]["q_len"]) == (16, SEQ)
    assert layers["decoder.layers.0.encoder_attn"]["kv_len"] == 16

    clip = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                     "vocab_size": 100},
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": 32, "patch_size": 8},
    )
    layers = _attention(_profile(runner, f"hf:{_folder(tmp_path, 'clip', clip)}")[0])
    assert layers["text_model.encoder.layers.0.self_attn"]["causal"]
    assert layers["vision_model.encoder.layers.0.self_attn"]["q_len"] == 17
