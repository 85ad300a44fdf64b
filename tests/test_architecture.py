"""The package layout docs/architecture.md describes, checked on the code itself.

Every import of every attnprof module is read from its source, at the top level and inside
functions alike: the module graph has no cycle, and a package imports only packages below it
in LAYERS. A subprocess then checks that the light commands import no heavy library.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnprof"

# Lowest first. A module may import modules of its own unit or of units listed before it.
# (A unit is a top-level module or package of attnprof; docs/architecture.md says what each owns.)
LAYERS: tuple[str, ...] = (
    "version",
    "errors",
    "store",
    "backends",
    "settings",
    "machine",
    "measure",
    "targets",
    "profiling",
    "costmodel",
    "plans",
    "tuning",
    "gate",
    "doctor",
    "report",
    "api",  # the public Python API: it returns records with their reports (report/) at hand
    "pytest_plugin",  # the pytest plugin (entry point pytest11): gate, targets and report, below the CLI
    "cli",
    "records",  # the re-export of every record, for other tools; nothing inside attnprof imports it
    "__main__",
    "",  # attnprof/__init__.py: the public API, loaded lazily
)
HEAVY = ("torch", "scipy", "pandas", "numpy")


def module_name(path: Path) -> str:
    parts = ["attnprof", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The attnprof modules `name` imports anywhere in its source (functions included)."""
    path = MODULES[name]
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in MODULES else source)
    return {m for m in found if m in MODULES and m != name}


GRAPH: dict[str, set[str]] = {name: imports_of(name) for name in MODULES}


def unit_of(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_every_unit_has_a_layer():
    assert sorted({unit_of(m) for m in MODULES} - set(LAYERS)) == []


def test_no_import_cycles_anywhere():
    """Depth-first search for a back edge; the cycle found is named in full."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_imports_point_down_the_layers():
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if rank[unit_of(target)] > rank[unit_of(module)]
    )
    assert upward == []


def test_nothing_inside_imports_the_records_reexport():
    users = sorted(m for m, targets in GRAPH.items() if "attnprof.records" in targets)
    assert users == []


def test_record_modules_import_no_heavy_library():
    """Records are read by the light commands (report, compare): their modules stay torch-free."""
    offenders = []
    for name, path in MODULES.items():
        if not (name.endswith(".records") or name in ("attnprof.store", "attnprof.settings", "attnprof.backends")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset == 0:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in HEAVY]
    assert offenders == []


def _heavy_modules_after(argv: list[str], cwd: Path) -> list[str]:
    """Run the CLI in a fresh interpreter with `argv`; the heavy libraries it imported."""
    probe = (
        "import json, sys\n"
        "from attnprof.cli.app import main\n"
        f"sys.argv = ['attnprof', *{argv!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "sys.__stderr__.write('HEAVY=' + json.dumps(heavy) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    line = [row for row in done.stderr.splitlines() if row.startswith("HEAVY=")]
    assert line, done.stderr
    return json.loads(line[-1].removeprefix("HEAVY="))


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["report", "--help"], ["check", "--help"]])
def test_light_commands_import_no_heavy_library(argv, tmp_path):
    assert _heavy_modules_after(argv, tmp_path) == []


SAVED = Path(__file__).parent / "data" / "written_before_reorganisation"


@pytest.mark.parametrize("name", ["profile.json", "plan.json", "fit.json", "check.json"])
@pytest.mark.parametrize("fmt", ["table", "markdown", "json", "html"])
def test_report_of_saved_files_imports_no_heavy_library(tmp_path, name, fmt):
    """CSV and Parquet build a DataFrame, so they load pandas; every other format stays light."""
    argv = ["report", str(SAVED / name), "-f", fmt, "-o", str(tmp_path / "out")]
    assert _heavy_modules_after(argv, tmp_path) == []


@pytest.mark.parametrize("fmt", ["table", "markdown", "html"])
def test_report_of_a_distributed_profile_imports_no_heavy_library(tmp_path, fmt):
    from attnprof.store import write_record
    from tests.samples import sample_distributed

    write_record(tmp_path / "merged.json", sample_distributed(pipeline=True))
    argv = ["report", str(tmp_path / "merged.json"), "-f", fmt, "-o", str(tmp_path / "out")]
    assert _heavy_modules_after(argv, tmp_path) == []


def test_compare_of_saved_files_imports_no_heavy_library(tmp_path):
    profile = PACKAGE.parent / "profiles" / "zoo-decoder.json"
    assert _heavy_modules_after(["compare", str(profile), str(profile)], tmp_path) == []


def test_the_public_api_shadows_no_package():
    """`attnprof.apply` is the function; the applier's package is `attnprof.plans`, importable beside it."""
    probe = (
        "import attnprof, attnprof.plans.engine\n"
        "assert callable(attnprof.apply) and callable(attnprof.load_plan)\n"
        "assert callable(attnprof.plans.engine.apply_plan)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_importing_attnprof_imports_no_heavy_library():
    probe = (
        "import json, sys, attnprof\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(done.stdout) == [], done.stderr


def test_doctor_imports_torch_but_neither_scipy_nor_pandas(tmp_path):
    """The doctor inspects torch, so it imports it; the statistics and table libraries stay out."""
    heavy = _heavy_modules_after(["doctor", "--json"], tmp_path)
    assert "torch" in heavy and "scipy" not in heavy and "pandas" not in heavy
