"""Renderings of a CheckResult: table, Markdown, JUnit and benchmark-action JSON."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from rich.console import Console

from attnprof.gate.compare import compare_profiles
from attnprof.gate.records import CheckResult
from attnprof.report.check import benchmark_action_json, check_junit, check_markdown, print_check
from tests.samples import make_profile


def noisy_result() -> CheckResult:
    baseline = make_profile(seed=1, noise=0.4)
    return compare_profiles(baseline, make_profile(seed=2, noise=0.4, attn_slowdown=1.1))


def test_inconclusive_metrics_are_skipped_test_cases_with_what_would_settle_them() -> None:
    result = noisy_result()
    assert result.verdict == "inconclusive"
    suite = ET.fromstring(check_junit(result)).find("testsuite")
    assert suite is not None
    skipped = [c for c in suite.findall("testcase") if c.find("skipped") is not None]
    assert len(skipped) == len(result.inconclusive()) == int(suite.get("skipped", "0")) > 0
    messages = [c.find("skipped").get("message", "") for c in skipped]  # type: ignore[union-attr]
    assert all("repeats" in m or "too high" in m for m in messages)
    assert suite.get("failures") == "0"


def test_table_lists_what_does_not_pass_and_hides_the_rest() -> None:
    result = noisy_result()
    out = io.StringIO()
    print_check(result, Console(file=out, width=200, no_color=True), show_all=False)
    text = out.getvalue()
    assert "attnprof check: inconclusive" in text and "more metrics pass or are not gated (--all shows them)" in text
    everything = io.StringIO()
    print_check(result, Console(file=everything, width=200, no_color=True), show_all=True)
    assert "layers.blocks.0.attn.q_proj.flops" in everything.getvalue()
    assert "layers.blocks.0.attn.q_proj.flops" not in text


def test_markdown_escapes_table_cells() -> None:
    result = compare_profiles(make_profile(seed=1), make_profile(seed=1, backend="math"))
    result.failures()[0].detail = "a | b"
    markdown = check_markdown(result)
    assert "a \\| b" in markdown
    assert "## attnprof check: ❌ regression" in markdown


def test_benchmark_json_has_time_and_memory_only() -> None:
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2))
    entries = json.loads(benchmark_action_json(result))
    assert entries and all(set(e) >= {"name", "unit", "value"} for e in entries)
    assert not any("flops" in e["name"] for e in entries)
    assert len(entries) == sum(m.kind != "exact" for m in result.metrics)

