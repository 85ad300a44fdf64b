"""`attnprof compare`, `check` and `baseline` in-process: exit codes, CI files, configuration,
and an end-to-end run on a real model whose knob slows one layer down."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.gate.records import CheckResult
from attnprof.profiling.records import Profile, load_profile
from attnprof.store import read_record, write_record
from tests.samples import make_profile, other_machine

DEMO_MODEL = Path(__file__).parents[1] / "examples" / "check_demo_model.py"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    for name in ("ATTNPROF_BASELINE", "ATTNPROF_THRESHOLDS", "ATTNPROF_METRICS", "ATTNPROF_ALPHA"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def save(tmp_path: Path, name: str, profile: Profile) -> str:
    write_record(tmp_path / name, profile)
    return str(tmp_path / name)


def test_compare_equal_profiles_passes(runner: CliRunner, tmp_path: Path) -> None:
    a, b = save(tmp_path, "a.json", make_profile(seed=1)), save(tmp_path, "b.json", make_profile(seed=2))
    result = runner.invoke(app, ["compare", a, b])
    assert result.exit_code == 0, result.output
    assert "attnprof compare: pass" in result.stdout and "no regression in" in result.stdout


def test_compare_regression_exits_1_naming_the_layer_and_writes_ci_files(runner: CliRunner, tmp_path: Path) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, attn_slowdown=1.5))
    args = ["--markdown", "summary.md", "--junit", "junit.xml", "--result", "check.json"]
    args += ["--benchmark-json", "bench.json"]
    result = runner.invoke(app, ["compare", a, b, *args])
    assert result.exit_code == 1, result.output
    assert "performance regression: step (" in result.stderr
    assert "accounted for by layers.blocks.0.attn (own time +1.5" in result.stderr
    assert "Traceback" not in result.output

    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.startswith("## attnprof compare: ❌ regression")
    assert "`layers.blocks.0.attn`" in markdown and "<details>" in markdown
    assert "| layers.blocks.0.attn | forward |" in markdown  # the attribution table

    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    saved = read_record(tmp_path / "check.json", CheckResult)
    assert len(cases) == int(suite.get("tests", "0")) == len(saved.metrics)  # one test case per metric
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"step [median]"}  # modules are reported, not gated, by default
    assert int(suite.get("failures", "0")) == len(saved.failures())

    entries = json.loads((tmp_path / "bench.json").read_text())
    step = next(e for e in entries if e["name"].endswith(" step (median)"))
    assert step["unit"] == "ms" and step["value"] > 10 and step["range"].startswith("± ")
    assert {e["unit"] for e in entries} == {"ms", "MiB"}


def test_report_writes_a_saved_check_as_the_same_ci_files(runner: CliRunner, tmp_path: Path) -> None:
    """`check --junit FILE` and `report CHECK.json --format junit` are one format of one registry."""
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, attn_slowdown=1.5))
    flags = {"markdown": "summary.md", "junit": "junit.xml", "benchmark-json": "bench.json"}
    args = [arg for name, path in flags.items() for arg in (f"--{name}", path)]
    assert runner.invoke(app, ["compare", a, b, "--result", "check.json", *args]).exit_code == 1
    for name, path in flags.items():
        rendered = runner.invoke(app, ["report", "check.json", "--format", name, "--out", f"again-{path}"])
        assert rendered.exit_code == 0, rendered.output
        assert (tmp_path / f"again-{path}").read_text() == (tmp_path / path).read_text(), name


def test_json_flag_prints_the_result_even_on_a_regression(runner: CliRunner, tmp_path: Path) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, attn_slowdown=1.5))
    result = runner.invoke(app, ["compare", a, b, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["verdict"] == "regression"  # stdout is the JSON and nothing else
    assert "performance regression" in result.stderr


def test_compare_machine_mismatch_exits_4_unless_allowed(runner: CliRunner, tmp_path: Path) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, machine=other_machine()))
    refused = runner.invoke(app, ["compare", a, b])
    assert refused.exit_code == 4
    assert "different machine (cpu: Test CPU 3000 vs Other CPU 9000)" in refused.stderr
    allowed = runner.invoke(app, ["compare", a, b, "--allow-machine-mismatch"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: machines differ" in allowed.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--threshold", "median5%"], 2, "bad threshold 'median5%'"),
        (["--alpha", "2"], 2, "--alpha must be between 0 and 0.5"),
    ],
)
def test_compare_bad_options(runner: CliRunner, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    a, b = save(tmp_path, "a.json", make_profile(seed=1)), save(tmp_path, "b.json", make_profile(seed=2))
    result = runner.invoke(app, ["compare", a, b, *args])
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.output


def test_compare_bad_files(runner: CliRunner, tmp_path: Path) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, "totals": ')
    (tmp_path / "future.json").write_text('{"schema_version": 99}')
    other = make_profile(seed=2)
    other.settings.seq_len = 256
    b = save(tmp_path, "seq256.json", other)
    for path, message in [
        ("missing.json", "missing.json: no such file"),
        (str(tmp_path / "corrupt.json"), "corrupt file"),
        (str(tmp_path / "future.json"), "schema_version 99 is newer"),
        (b, "seq_len 128 vs 256"),
    ]:
        result = runner.invoke(app, ["compare", a, path])
        assert result.exit_code == 2, (path, result.output)
        assert message in result.stderr


def test_thresholds_come_from_pyproject_and_the_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, attn_slowdown=1.5))
    # 80% tolerates the 50% slower attention (and the +30% step and block) that fails by default.
    loose = '["median:80%", "memory:0%"]'
    (tmp_path / "pyproject.toml").write_text(f"[tool.attnprof]\nthresholds = {loose}\nbaseline = 'a.json'\n")
    assert runner.invoke(app, ["compare", a, b]).exit_code == 0
    monkeypatch.setenv("ATTNPROF_THRESHOLDS", "median:5%")  # the environment beats pyproject
    assert runner.invoke(app, ["compare", a, b]).exit_code == 1
    assert runner.invoke(app, ["compare", a, b, "-t", "median:80%"]).exit_code == 0  # the command line beats both


def test_module_gates_are_an_opt_in_from_pyproject_or_the_command_line(runner: CliRunner, tmp_path: Path) -> None:
    a = save(tmp_path, "a.json", make_profile(seed=1))
    b = save(tmp_path, "b.json", make_profile(seed=2, attn_slowdown=1.5))
    by_default = runner.invoke(app, ["compare", a, b, "--result", "default.json"])
    assert by_default.exit_code == 1
    assert {m.metric for m in read_record(tmp_path / "default.json", CheckResult).failures()} == {"step"}
    (tmp_path / "pyproject.toml").write_text("[tool.attnprof]\nmodule_limit = '5%'\n")
    gated = runner.invoke(app, ["compare", a, b, "--result", "gated.json"])
    assert gated.exit_code == 1
    failing = {m.metric for m in read_record(tmp_path / "gated.json", CheckResult).failures()}
    assert {"step", "layers.blocks.0.attn"} <= failing and "layers.blocks.0.mlp" not in failing
    loose = runner.invoke(app, ["compare", a, b, "--module-limit", "80%", "--result", "loose.json"])
    loosely = read_record(tmp_path / "loose.json", CheckResult).failures()
    assert "layers.blocks.0.attn" not in {m.metric for m in loosely}
    assert loose.exit_code == 1  # the step still fails
    bad = runner.invoke(app, ["compare", a, b, "--module-limit", "lots"])
    assert bad.exit_code == 2 and "--module-limit 'lots'" in bad.stderr


def test_unknown_pyproject_keys_warn(runner: CliRunner, tmp_path: Path) -> None:
    a, b = save(tmp_path, "a.json", make_profile(seed=1)), save(tmp_path, "b.json", make_profile(seed=2))
    (tmp_path / "pyproject.toml").write_text("[tool.attnprof]\ntreshold = 'median:5%'\n")
    result = runner.invoke(app, ["compare", a, b])
    assert result.exit_code == 0
    assert "tool.attnprof.treshold is not an attnprof setting" in result.stderr


def test_check_without_a_baseline_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["check", "zoo:decoder"])
    assert result.exit_code == 2 and "no baseline" in result.stderr
    result = runner.invoke(app, ["check", "--baseline", "nope.json", "--update-baseline"])
    assert result.exit_code == 2 and "no baseline to update" in result.stderr
    result = runner.invoke(app, ["check", "--baseline", "nope.json"])
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = runner.invoke(app, ["baseline", "zoo:decoder"])
    assert result.exit_code == 2 and "pass --out FILE" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # five gate runs in worker processes: minutes under load
def test_check_end_to_end_names_the_slowed_layer(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settings from pyproject.toml. The step is gated with a margin no load on a shared machine
    # eats (benchmarks/check_gate.py measures the default 3%; one module's growth in unchanged
    # code stayed below 2.5% there): the unchanged code must pass whatever else runs here, and
    # the knob's tenfold extra work in one layer is far past it.
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.attnprof]\ntarget = '{DEMO_MODEL}'\nbaseline = 'profiles/demo.json'\n"
        "thresholds = ['step:median:25%', 'memory:0%']\n"
        "[tool.attnprof.settings]\nrepeats = 12\nwarmup = 2\n"
    )
    monkeypatch.delenv("DEMO_EXTRA_MATMULS", raising=False)
    recorded = runner.invoke(app, ["baseline", str(DEMO_MODEL)])
    assert recorded.exit_code == 0, recorded.output
    baseline = load_profile(tmp_path / "profiles" / "demo.json")
    # A gate run's defaults on a CPU: one thread, CPU time, the probe; the repeats pyproject asked for.
    assert (baseline.settings.threads, baseline.settings.clock, baseline.settings.reference_probe) == (1, "cpu", True)
    assert baseline.settings.repeats == 12 and len(baseline.totals.time_ms.samples) == 12

    knob_off = runner.invoke(app, ["check", "--result", "off.json"])
    assert knob_off.exit_code == 0, knob_off.output
    unchanged = read_record(tmp_path / "off.json", CheckResult)
    assert unchanged.failures() == [] and unchanged.verdict in ("pass", "inconclusive")
    assert all(m.status == "pass" for m in unchanged.metrics if m.kind in ("exact", "memory"))

    # 100 extra 128x128 matrix products: about 10x the layer's own work.
    monkeypatch.setenv("DEMO_EXTRA_MATMULS", "100")
    knob_on = runner.invoke(app, ["check", "--result", "on.json"])
    assert knob_on.exit_code == 1, knob_on.output
    assert "layers.layers.1.attn" in knob_on.stderr
    result = read_record(tmp_path / "on.json", CheckResult)
    # The slowed layer is named twice over: by its exact metrics, which change in it and nowhere
    # else, and by the step's attribution, whose largest share is its own time.
    exact_changes = [m.layer for m in result.failures() if m.kind == "exact" and m.layer is not None]
    assert exact_changes and all(layer.startswith("layers.1.attn") for layer in exact_changes), exact_changes
    rows = {(m.metric, m.statistic): m for m in result.metrics}
    assert rows[("step", "median")].status == "regression"
    assert result.attribution and result.attribution[0].layer == "layers.1.attn", result.attribution
    assert "accounted for by layers.layers.1.attn" in knob_on.stderr
    assert rows[("layers.layers.1.attn.flops", "exact")].status == "changed"
    # 100 products of (2*64) x 128 by 128 x 128, at 2 FLOPs per multiply-add
    assert rows[("flops", "exact")].current - rows[("flops", "exact")].baseline == 100 * 2 * 128 * 128 * 128

    updated = runner.invoke(app, ["check", "--update-baseline"])
    assert updated.exit_code == 0, updated.output
    assert "baseline saved to profiles/demo.json" in updated.stderr
    assert runner.invoke(app, ["check", "--metric", "*flops*"]).exit_code == 0  # the knob is the new normal
