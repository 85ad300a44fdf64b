"""attnprof's pytest plugin: gate a model's performance inside a test suite, the way
pytest-benchmark users do, with `attnprof check`'s judgement.

Loaded by pytest through the `pytest11` entry point once attnprof is installed. A test asks for
the `attnprof_check` fixture and calls it with a target; the test fails with the verdict when
the target regressed against its stored baseline (or against itself at a git ref):

    def test_decoder_speed(attnprof_check):
        attnprof_check("models/decoder.py", baseline="profiles/decoder.json")

    @pytest.mark.attnprof(against_ref="origin/main")
    def test_decoder_against_main(attnprof_check):
        attnprof_check("models/decoder.py")

The marker's keywords are the fixture's defaults for that test. Thresholds, alpha, the module
limit and run settings come from [tool.attnprof] as for the command line. Options:
`--attnprof-update-baselines` records (or refreshes) every baseline a test names instead of
checking; `--attnprof-against-ref REF` checks every test against REF instead of its baseline.
A missing baseline fails the test (never a silent pass); a user's model that raises or exits
fails it with the reason.

Nothing heavy is imported until a test calls the fixture, so the plugin costs other suites nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from attnprof.errors import AttnprofError
from attnprof.gate.records import CheckResult

MARKER = "attnprof"
CheckFixture = Callable[..., CheckResult]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnprof", "attnprof performance gate")
    group.addoption(
        "--attnprof-update-baselines", action="store_true", default=False,
        help="Record the baselines attnprof_check names (overwriting them) instead of checking.",
    )
    group.addoption(
        "--attnprof-against-ref", default=None, metavar="REF",
        help="Check every attnprof_check target against itself at git REF instead of its baseline file.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(baseline=None, against_ref=None, thresholds=None, module_limit=None): "
        "defaults for the attnprof_check fixture in this test",
    )


def run_check(
    target: str,
    baseline: str | Path | None = None,
    against_ref: str | None = None,
    thresholds: Sequence[str] | None = None,
    module_limit: str | None = None,
    update_baseline: bool = False,
) -> tuple[CheckResult | None, str]:
    """Profile TARGET and judge it against BASELINE (a profile file) or against itself at git
    AGAINST_REF; with `update_baseline`, record BASELINE instead (no result). The result and
    the text a failing test shows."""
    from attnprof.gate.compare import CheckOptions, compare_profiles
    from attnprof.gate.runs import gate_profile, gate_settings, profile_against_ref
    from attnprof.profiling.records import load_profile
    from attnprof.report.check import check_text
    from attnprof.settings import ProjectConfig
    from attnprof.store import write_record
    from attnprof.targets.load import load_workload

    config = ProjectConfig.load()
    options = CheckOptions.from_config(config, thresholds, module_limit=module_limit)
    workload = load_workload(target)
    if update_baseline:
        if baseline is None:
            raise AttnprofError("--attnprof-update-baselines: this check names no baseline file to record")
        write_record(Path(baseline), gate_profile(workload, gate_settings(workload, config, {})))
        return None, f"baseline saved to {baseline}"
    if against_ref is not None:
        reference, current, label = profile_against_ref(against_ref, workload, gate_settings(workload, config, {}))
    elif baseline is not None:
        path = Path(baseline)
        if not path.exists():
            raise AttnprofError(
                f"{path}: no baseline; record it with pytest --attnprof-update-baselines "
                f"(or attnprof baseline {target} --out {path}) and commit it"
            )
        reference = load_profile(path)
        current, label = gate_profile(workload, reference.settings), str(path)
    else:
        raise AttnprofError("attnprof_check needs baseline=FILE or against_ref=REF (argument or marker)")
    result = compare_profiles(reference, current, options, label, "this test")
    return result, check_text(result)


@pytest.fixture
def attnprof_check(request: pytest.FixtureRequest) -> CheckFixture:
    """`attnprof_check(target, baseline=None, against_ref=None, thresholds=None, module_limit=None)`:
    fails the test on a regression (or when nothing could be measured); returns the CheckResult
    otherwise (pass or inconclusive), for further asserts."""
    marker = request.node.get_closest_marker(MARKER)
    defaults: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    update = bool(request.config.getoption("--attnprof-update-baselines"))
    forced_ref = request.config.getoption("--attnprof-against-ref")

    def check(target: str, **given: Any) -> CheckResult:
        arguments = {**defaults, **given}
        if forced_ref is not None and not update:
            arguments["against_ref"], arguments["baseline"] = forced_ref, None
        try:
            result, text = run_check(target, update_baseline=update, **arguments)
        except AttnprofError as exc:
            pytest.fail(f"attnprof check {target}: nothing was checked: {exc}", pytrace=False)
        if result is None:
            pytest.skip(text)
        if result.verdict == "regression":
            from attnprof.gate.compare import summary

            pytest.fail(f"{summary(result)}\n\n{text}", pytrace=False)
        return result

    return check
