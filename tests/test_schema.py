"""The published JSON Schemas (docs/schema/) are the ones the records generate, and they accept
the files attnprof writes (every record a test writes is validated too: conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.report.registry import ADAPTERS, record_schema

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schema"
SAVED = Path(__file__).parent / "data" / "written_before_reorganisation"


@pytest.mark.parametrize("kind", [adapter.kind for adapter in ADAPTERS])
def test_committed_schema_is_the_generated_one(kind):
    committed = json.loads((DOCS / f"{kind}.schema.json").read_text(encoding="utf-8"))
    assert committed == record_schema(kind), f"regenerate: attnprof schema {kind} -o docs/schema/{kind}.schema.json"
    jsonschema.Draft202012Validator.check_schema(committed)


def test_schema_command_prints_it(tmp_path):
    result = CliRunner().invoke(app, ["schema", "plan"])
    assert result.exit_code == 0 and json.loads(result.stdout) == record_schema("plan")
    refused = CliRunner().invoke(app, ["schema", "profiles"])
    assert refused.exit_code == 2 and "profile, plan, check, fit" in refused.output


@pytest.mark.parametrize("name", ["profile.json", "plan.json", "check.json", "fit.json"])
def test_files_written_by_earlier_versions_validate(name):
    data = json.loads((SAVED / name).read_text(encoding="utf-8"))
    (adapter,) = [adapter for adapter in ADAPTERS if adapter.recognizes(data)]
    jsonschema.validate(data, record_schema(adapter.kind), cls=jsonschema.Draft202012Validator)


def test_a_field_of_the_wrong_type_is_refused():
    data = json.loads((SAVED / "profile.json").read_text(encoding="utf-8"))
    data["layers"][0]["flops"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="'many' is not of type 'integer'"):
        jsonschema.validate(data, record_schema("profile"), cls=jsonschema.Draft202012Validator)


def test_the_suite_fails_a_test_that_writes_a_record_its_schema_refuses(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(f"""
        from pathlib import Path
        from attnprof.profiling.records import load_profile
        from attnprof.store import write_record

        def test_writes_a_damaged_profile(tmp_path):
            profile = load_profile(Path({str(SAVED / "profile.json")!r}))
            profile.layers[0].flops = "many"  # a dataclass does not check, the schema does
            write_record(tmp_path / "p.json", profile)

        def test_writes_a_sound_profile(tmp_path):
            write_record(tmp_path / "p.json", load_profile(Path({str(SAVED / "profile.json")!r})))
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # its own store module to watch
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*does not match its JSON Schema*", "*profile: /layers/0/flops: 'many' is not of type*"]
    )
