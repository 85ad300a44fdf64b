"""The GPU check's pieces that need no GPU: the attention FLOPs and TF/s it compares, its table,
its RESULTS.md writer, and the script's answers on a machine without an NVIDIA GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import CHECKS, GpuCheck, Outcome

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("q_len", "kv_len"), [(7, 7), (3, 10), (1, 5), (16, 16)])
def test_attention_flops_count_the_unmasked_pairs(q_len, kv_len):
    batch, heads, head_dim = 2, 3, 8
    offset = kv_len - q_len  # queries are the last q_len positions of the keys
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=offset)
    assert gpu_check.attention_flops(batch, heads, q_len, kv_len, head_dim, causal=True) == (
        batch * heads * int(allowed.sum()) * 4 * head_dim
    )
    assert gpu_check.attention_flops(batch, heads, q_len, kv_len, head_dim, causal=False) == (
        batch * heads * q_len * kv_len * 4 * head_dim
    )


def test_flash_shape_figures():
    # B8 H16 S4096 D128 non-causal: 4·D per pair, S² pairs per head.
    flops = gpu_check.attention_flops(8, 16, 4096, 4096, 128, causal=False)
    assert flops == 8 * 16 * 4096 * 4096 * 512
    assert gpu_check.tflops(flops, 2e-3) == pytest.approx(flops / 2e-3 / 1e12)
    assert gpu_check.within(1.04, 1.0, 0.05) and not gpu_check.within(1.06, 1.0, 0.05)
    assert not gpu_check.within(1.0, 0.0, 0.05)


def _check(name: str) -> GpuCheck:
    return GpuCheck(name, "what", 1, lambda budget: Outcome("pass", ""))


def test_table_has_one_row_per_check_and_keeps_cells_whole():
    table = gpu_check.render_table([(_check("a"), Outcome("pass", "1 | 2\nthree")),
                                    (_check("b"), Outcome("fail", "x"))])
    lines = table.splitlines()
    assert lines[:2] == ["| check | result | figures |", "| --- | --- | --- |"]
    assert lines[2] == "| a | pass | 1 \\| 2 three |"
    assert lines[3] == "| b | fail | x |"


def test_results_section_is_appended_then_replaced_in_place(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Overhead\n\nold figures\n", encoding="utf-8")
    gpu_check.write_section(results, "first run")
    assert results.read_text() == "# Results\n\n## Overhead\n\nold figures\n\n## GPU check\n\nfirst run\n"

    results.write_text(results.read_text() + "\n## Later section\n\nkept\n")
    gpu_check.write_section(results, "second run")
    text = results.read_text()
    assert "first run" not in text and text.count("## GPU check") == 1
    assert text == ("# Results\n\n## Overhead\n\nold figures\n\n## GPU check\n\nsecond run\n"
                    "\n## Later section\n\nkept\n")
    gpu_check.write_section(results, "second run")
    assert results.read_text() == text  # idempotent


def test_results_section_written_into_a_new_file(tmp_path):
    results = tmp_path / "RESULTS.md"
    gpu_check.write_section(results, "figures")
    assert results.read_text() == "## GPU check\n\nfigures\n"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_script_without_a_gpu_exits_4_with_one_line():
    done = _script()
    assert done.returncode == 4
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "needs an NVIDIA GPU" in done.stderr


def test_dry_run_lists_every_check_and_runs_nothing():
    done = _script("--dry-run")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines()]
    assert listed == [check.name for check in CHECKS] + ["total"]
    assert sum(check.budget_s for check in CHECKS) <= 8 * 60  # the promised length on an H100/H200


def test_unknown_check_name_is_a_usage_error():
    done = _script("--dry-run", "--only", "layer-times,nope")
    assert done.returncode == 2
    assert "unknown check(s) nope" in done.stderr


def test_gate_models_load_and_differ_only_in_the_planted_work(tmp_path):
    from attnprof.profiling.run import prepare
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload

    demo = str(REPO / "examples" / "check_demo_model.py")
    outputs = []
    for extra in (0, 3):
        path = tmp_path / f"gate_{extra}.py"
        path.write_text(gpu_check._GATE_MODEL.format(role="Test", demo=demo, extra=extra))
        workload = load_workload(str(path))
        assert workload.defaults["device"] == "cuda"  # what the GPU check runs it on
        prepared = prepare(workload, resolve_settings(workload, {"device": "cpu", "batch_size": 1, "seq_len": 8}))
        assert prepared.model.layers[1].attn.extra_matmuls == extra
        outputs.append(prepared.step())
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-3, atol=1e-3)  # the extra work leaves outputs nearly alike
