"""The pytest plugin in a suite of its own (pytester): a missing baseline fails, recording one
skips, unchanged code passes, and a slower model fails its test with the verdict."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from tests.model_sources import slowable_model

pytest_plugins = ["pytester"]

MODEL = slowable_model('int(os.environ.get("PLUGIN_TEST_EXTRA", "0"))')
SUITE = '''
import pytest


def test_model_speed(attnprof_check):
    result = attnprof_check("model.py", baseline="profiles/model.json")
    assert result.verdict in ("pass", "inconclusive")


@pytest.mark.attnprof(baseline="profiles/model.json")
def test_model_speed_by_marker(attnprof_check):
    attnprof_check("model.py")
'''
# The step gated with a margin no load eats; the slower model changes FLOPs, which are exact.
PYPROJECT = "[tool.attnprof]\nthresholds = ['step:median:100%', 'memory:0%']\n[tool.attnprof.settings]\nrepeats = 6\n"


def test_the_plugin_is_registered_for_pytest() -> None:
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("attnprof") == "attnprof.pytest_plugin"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four pytest sessions, each profiling twice in worker processes: minutes under load
def test_a_suite_gates_its_model_with_the_fixture_and_the_marker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLUGIN_TEST_EXTRA", raising=False)
    for name in ("ATTNPROF_BASELINE", "ATTNPROF_THRESHOLDS", "ATTNPROF_REPEATS"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".py", model=MODEL)
    pytester.makepyfile(test_speed=SUITE)
    (pytester.path / "pyproject.toml").write_text(PYPROJECT)

    missing = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    missing.assert_outcomes(failed=2)
    missing.stdout.fnmatch_lines(
        ["*profiles/model.json: no baseline; record it with pytest --attnprof-update-baselines*"]
    )

    recorded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--attnprof-update-baselines", "-rs")
    recorded.assert_outcomes(skipped=2)
    recorded.stdout.fnmatch_lines(["*baseline saved to profiles/model.json*"])
    assert (pytester.path / "profiles" / "model.json").is_file()

    unchanged = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    unchanged.assert_outcomes(passed=2)

    monkeypatch.setenv("PLUGIN_TEST_EXTRA", "3")  # three extra products in `first`
    slower = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    slower.assert_outcomes(failed=2)
    slower.stdout.fnmatch_lines(["*performance regression: layers.first.flops*", "*attnprof check: regression*"])
