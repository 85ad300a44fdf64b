"""One test per row of the README's "When things go wrong" table, named after the row."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.store import SCHEMA_VERSION, read_json, read_jsonl

REPO = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / "models"
FAST = ["--batch-size", "1", "--seq-len", "8", "--repeats", "2", "--warmup", "1"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def _attnprof(args: list[str], cwd: Path, **environ: str) -> subprocess.Popen[str]:
    """`python -m attnprof ARGS` as a separate process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200", **environ}
    return subprocess.Popen(
        [sys.executable, "-m", "attnprof", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"exited with {process.returncode}: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def saved_profile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real profile's JSON, for the file rows."""
    folder = tmp_path_factory.mktemp("profile")
    result = CliRunner().invoke(app, ["profile", "zoo:gpt", *FAST, "--out", str(folder / "p.json")])
    assert result.exit_code == 0, result.output
    return json.loads((folder / "p.json").read_text())


def test_corrupt_or_truncated_file(runner: CliRunner, tmp_path: Path, saved_profile: dict) -> None:
    whole = json.dumps(saved_profile)
    (tmp_path / "cut.json").write_text(whole[: len(whole) // 2])
    (tmp_path / "garbage.json").write_bytes(b"\x89PNG\r\n")
    for name, reason in [("cut.json", "invalid JSON at line 1"), ("garbage.json", "not UTF-8 text")]:
        result = runner.invoke(app, ["report", name])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"{name}: corrupt file ({reason})" in result.stderr


def test_file_from_a_newer_attnprof(runner: CliRunner, tmp_path: Path, saved_profile: dict) -> None:
    (tmp_path / "new.json").write_text(json.dumps({**saved_profile, "schema_version": SCHEMA_VERSION + 1}))
    result = runner.invoke(app, ["report", "new.json"])
    assert result.exit_code == 2
    assert "newer than this attnprof understands" in result.stderr and "upgrade attnprof" in result.stderr


def test_file_from_an_older_attnprof(
    runner: CliRunner, tmp_path: Path, saved_profile: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnprof.store as store

    # Pretend the current schema is one newer than this profile's, its step renaming a field.
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(store, "MIGRATIONS", {})

    @store.migration(SCHEMA_VERSION)
    def rename_commit(data: dict) -> dict:
        data["commit"] = data.pop("git_commit")
        return data

    old = {k: v for k, v in saved_profile.items() if k != "commit"} | {"git_commit": "abc1234"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = runner.invoke(app, ["report", "old.json", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["commit"] == "abc1234"


# A writer that appends numbered records and rewrites JSON files, printing each record number
# once its append has returned (that is, once the record is complete and durable).
WRITER = r"""
import json, sys
from pathlib import Path
from attnprof.store import append_jsonl, atomic_write_text, write_new_record
folder, name, start, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print("ready", flush=True)
for n in range(start, start + count):
    append_jsonl(folder / "m.jsonl", {"writer": name, "n": n, "pad": "x" * (n % 200)})
    print(n, flush=True)
    text = json.dumps({"schema_version": 1, "writer": name, "n": n, "pad": "y" * (n % 300)})
    atomic_write_text(folder / f"state-{n % 2}.json", text)
    if n % 5 == 0:
        write_new_record(folder / "snap.json", {"writer": name, "n": n})
"""


def _start_writer(folder: Path, name: str, start: int, count: int = 10**6) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), name, str(start), str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _load_everything(folder: Path) -> list[dict]:
    """Every file a reader would open must load; returns the store's records."""
    for path in folder.glob("*.json"):
        read_json(path)
    return read_jsonl(folder / "m.jsonl").records


@pytest.mark.slow
def test_killed_mid_write(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    acknowledged: list[int] = []
    next_n = 0
    for _ in range(50):
        writer = _start_writer(tmp_path, "w", next_n)
        assert writer.stdout is not None
        first = writer.stdout.readline()  # the writer is in its loop: kill it somewhere in there
        time.sleep(rng.uniform(0.0, 0.02))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        acknowledged += [int(line) for line in (first + out).split()]
        stored = [r["n"] for r in _load_everything(tmp_path)]  # zero corrupt files
        assert len(stored) == len(set(stored)), "a record was stored twice"
        assert set(acknowledged) <= set(stored), "a completed record was lost"
        next_n = max(stored, default=-1) + 1
    assert len(acknowledged) >= 50  # every writer completed work before it was killed
    # Temporary files of killed writers may remain; no reader ever opens them.
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith((".json", ".jsonl"))]
    assert all(name.endswith(".tmp") for name in leftovers)


@pytest.mark.slow
def test_two_attnprof_processes_writing_to_one_profiles_folder(tmp_path: Path) -> None:
    # The store primitives, hammered by two processes at once...
    writers = [_start_writer(tmp_path, name, 0, count=150) for name in ("a", "b")]
    for writer in writers:
        writer.communicate()
        assert writer.returncode == 0
    records = _load_everything(tmp_path)
    for name in ("a", "b"):
        assert sorted(r["n"] for r in records if r["writer"] == name) == list(range(150))
    assert len(list(tmp_path.glob("snap*.json"))) == 60  # 30 each under one name: none overwritten
    # ...and two real `attnprof profile` runs of one workload into one profiles/ folder.
    runs = [_attnprof(["-q", "profile", "zoo:gpt", *FAST], tmp_path) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    saved = sorted((tmp_path / "profiles").rglob("*.json"))
    assert len(saved) == 2
    assert all(read_json(path)["workload"]["target"] == "zoo:gpt" for path in saved)


def test_two_runs_saved_under_one_name_keep_their_own_traces(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both runs get the same profile name, as two processes finishing in the same second do.
    monkeypatch.setattr("attnprof.cli.profile.profile_path", lambda profile, folder: folder / "w" / "profile.json")
    for _ in range(2):
        result = runner.invoke(app, ["profile", "zoo:gpt", *FAST, "--trace"])
        assert result.exit_code == 0, result.output
    folder = tmp_path / "profiles" / "w"
    assert sorted(p.name for p in folder.iterdir()) == [
        "profile-1.json",
        "profile-1.pt.trace.json.gz",
        "profile.json",
        "profile.pt.trace.json.gz",
    ]
    for name in ("profile", "profile-1"):
        trace_file = read_json(folder / f"{name}.json")["trace"]["trace_file"]
        assert Path(trace_file).name == f"{name}.pt.trace.json.gz"
        assert json.loads(gzip.decompress((tmp_path / trace_file).read_bytes()))["traceEvents"]


def _interrupted_profile(tmp_path: Path, signum: int) -> tuple[int, str]:
    run = _attnprof(["-q", "profile", str(MODELS / "slow_forward.py"), "--repeats", "1000"], tmp_path)
    _wait_for(tmp_path / "started", run)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    return run.returncode, err


@pytest.mark.slow
def test_ctrl_c(tmp_path: Path) -> None:
    code, err = _interrupted_profile(tmp_path, signal.SIGINT)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "profiles").exists()


@pytest.mark.slow
def test_sigterm(tmp_path: Path) -> None:
    code, err = _interrupted_profile(tmp_path, signal.SIGTERM)
    assert code == 143 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "profiles").exists()


def test_out_of_memory_while_profiling_or_tuning(runner: CliRunner, tmp_path: Path) -> None:
    model = str(MODELS / "cuda_out_of_memory.py")
    too_large = [*FAST, "--batch-size", "4", "--seq-len", "32"]  # 128 tokens: over the model's 64
    for command in (["profile", model, *too_large], ["tune", model, *too_large, "--knobs", "dtype"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 4, result.output
        assert "out of memory: CUDA out of memory. Tried to allocate 16.00 GiB" in result.stderr
        assert "try a smaller --batch-size or --seq-len" in result.stderr
        assert "Traceback" not in result.output
        assert not (tmp_path / "profiles").exists() and not (tmp_path / "plan.json").exists()
    assert runner.invoke(app, ["profile", model, *FAST, "--no-save"]).exit_code == 0  # small fits


def test_disk_full_no_permission_output_path_not_writable(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("keep me")
    result = runner.invoke(app, ["profile", "zoo:gpt", *FAST, "--out", "a-file/p.json"])
    assert result.exit_code == 4, result.output
    assert "a-file/p.json: cannot write (" in result.stderr
    assert "Traceback" not in result.output and (tmp_path / "a-file").read_text() == "keep me"


def test_bad_target_flag_or_budget_string(runner: CliRunner) -> None:
    for args, message in [
        (["x" * 300 + ".py"], "not a loadable target (File name too long)"),
        (["zoo:decoder", "--seq-len", "0"], "--seq-len must be a positive integer"),
    ]:
        result = runner.invoke(app, ["profile", *args])
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_exception_in_the_users_model_code(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", str(MODELS / "broken_forward.py"), *FAST])
    assert result.exit_code == 3
    assert "broken_forward.py" in result.stderr and "user bug in forward" in result.stderr
    assert "attnprof/profiling/run.py" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "zoo:gpt", *FAST, "--device", "cuda"])
    assert result.exit_code == 4 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "attnprof: error: --device cuda: no CUDA GPU is available on this machine"
    )


FRAGILE = MODELS / "fragile.py"
# Three points: sequence lengths 8 and 11 run, 16 meets the fault the test sets.
SWEEP = [
    "fit", str(FRAGILE), "--seq-len", "8:16", "--batch-size", "1", "--dtype", "fp32", "--backend", "flash",
    "--threads", "1", "-n", "3", "--repeats", "1", "--warmup", "0",
]  # fmt: skip


def _stored(folder: Path) -> list[dict]:
    (store,) = folder.glob("profiles/*/measurements-*.jsonl")
    return read_jsonl(store).records


def _by_seq_len(folder: Path) -> dict[int, dict]:
    return {m["config"]["seq_len"]: m for m in _stored(folder)}


def _refused_fit(result: Result) -> None:
    """Two good points cannot be cross-validated: the fit is saved but refused (exit 1), the faulty point recorded."""
    assert result.exit_code == 1, result.output
    assert "the cost model is not usable: it could not be cross-validated" in result.stderr


def test_out_of_memory_in_a_sweep_point(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROF_TEST_FAULT", "oom")  # a real CPU allocation failure
    result = runner.invoke(app, SWEEP)
    _refused_fit(result)
    points = _by_seq_len(tmp_path)
    assert [points[s]["status"] for s in (8, 11, 16)] == ["ok", "ok", "oom"]
    assert points[16]["reason"].startswith("out of memory: [enforce fail")
    assert "DefaultCPUAllocator: can't allocate memory" in points[16]["reason"]
    # The cost model knows the point is infeasible and is fitted on the others.
    (saved,) = tmp_path.glob("profiles/*/costmodel-*.json")
    model = json.loads(saved.read_text())
    assert [(p["config"]["seq_len"], p["status"]) for p in model["infeasible"]] == [(16, "oom")]
    # Nothing of the failed attempt is left alive: its model was freed.
    (fragile,) = [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(FRAGILE)]
    assert len(fragile.LIVE) == 0


def test_non_finite_output_in_a_sweep_point(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROF_TEST_FAULT", "nan")
    result = runner.invoke(app, SWEEP)
    _refused_fit(result)
    points = _by_seq_len(tmp_path)
    assert [points[s]["status"] for s in (8, 11, 16)] == ["ok", "ok", "non_finite"]
    assert points[16]["reason"] == "the model's output contains NaN or inf under fp32"


@pytest.mark.slow
def test_hang_in_a_sweep_point(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROF_TEST_FAULT", "hang")
    result = runner.invoke(app, [*SWEEP, "--isolate", "--timeout", "30s"])
    _refused_fit(result)
    points = _by_seq_len(tmp_path)
    assert [points[s]["status"] for s in (8, 11, 16)] == ["ok", "ok", "error"]
    assert points[16]["reason"] == "timed out after 30 s"
    assert "batch 1 seq 16 fp32 flash: error: timed out after 30 s" in result.stderr


@pytest.mark.slow
def test_crash_in_a_sweep_point(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNPROF_TEST_FAULT", "segfault")
    result = runner.invoke(app, [*SWEEP, "--isolate"])
    _refused_fit(result)
    points = _by_seq_len(tmp_path)
    assert [points[s]["status"] for s in (8, 11, 16)] == ["ok", "ok", "error"]
    assert points[16]["reason"].startswith("crashed: killed by SIGSEGV")


@pytest.mark.slow
def test_ctrl_c_during_a_sweep(tmp_path: Path) -> None:
    log = tmp_path / "measured.log"
    command = [*SWEEP, "--seq-len", "8:15", "--batch-size", "1:4", "-n", "8"]  # 8 points, none faulty
    first = _attnprof(command, tmp_path, ATTNPROF_TEST_LOG=str(log), ATTNPROF_TEST_FAULT="slow")
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("profiles/*/measurements-*.jsonl")) or len(_stored(tmp_path)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "interrupted" in err and "Traceback" not in err
    finished = {(m["config"]["batch_size"], m["config"]["seq_len"]) for m in _stored(tmp_path)}
    assert 2 <= len(finished) < 8
    measured_before = len(log.read_text().splitlines())
    second = _attnprof(command, tmp_path, ATTNPROF_TEST_LOG=str(log))
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    remeasured = {tuple(map(int, line.split(",")[:2])) for line in log.read_text().splitlines()[measured_before:]}
    assert remeasured.isdisjoint(finished), "a finished point was measured again"
    stored = [(m["config"]["batch_size"], m["config"]["seq_len"]) for m in _stored(tmp_path)]
    assert len(stored) == len(set(stored)) == 8 and f"reused {len(finished)} from" in err
