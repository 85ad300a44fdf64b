"""Hostile inputs, one test per case: outputs that are devices, FIFOs, stdout or symlinks; data
files that name code; processes killed and signalled; numbers beyond any sane range; user code
that prints, changes directory or writes control characters. Processes are real where the case
is about processes; devices are made with mknod in a temp folder (never the real /dev/null)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.costmodel.measurements import MeasurementStore
from attnprof.errors import InputFileError
from attnprof.gate.records import MetricCheck
from attnprof.report.check import check_junit
from attnprof.store import ScratchFolder, append_line, atomic_write_text, write_record
from tests.samples import sample_check, sample_profile

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "1", "--seq-len", "8", "--repeats", "2", "--warmup", "1"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "COLUMNS": "200"}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    return CliRunner()


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "p.json"
    write_record(path, sample_profile())
    return path


def attnprof(args: list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attnprof", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
        timeout=600, check=False, **kwargs,  # type: ignore[arg-type]
    )


def one_line_error(stderr: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("attnprof: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr


def model_file(folder: Path, name: str, body: str) -> Path:
    """A model file: `body` holds build_model and may add to the imports."""
    path = folder / name
    path.write_text(
        "import os, sys, torch\nfrom torch import nn\n"
        + textwrap.dedent(body)
        + "\ndef example_inputs(batch_size, seq_len, device, dtype):\n"
        "    return (torch.randn(batch_size, seq_len, 8, device=device, dtype=dtype),)\n"
    )
    return path


# --- 1. outputs are written into devices, FIFOs and stdout; regular files replaced atomically ---


def _character_device(folder: Path) -> Path:
    path = folder / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the null device's numbers
    except PermissionError:
        pytest.skip("mknod of a character device is not permitted here")
    return path


def test_output_to_a_character_device_is_written_into_not_replaced(
    runner: CliRunner, tmp_path: Path, profile_file: Path
) -> None:
    device = _character_device(tmp_path)
    for args in (["report", str(profile_file), "-f", "json", "-o", str(device)],
                 ["compare", str(profile_file), str(profile_file), "--result", str(device), "--junit", str(device)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert stat.S_ISCHR(os.lstat(device).st_mode), "the device node was replaced by a file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".null")] == []  # no temp file left


def test_output_to_a_fifo_is_written_into(runner: CliRunner, tmp_path: Path, profile_file: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = runner.invoke(app, ["report", str(profile_file), "-f", "markdown", "-o", str(fifo)])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received and received[0].startswith(b"# ")


def test_output_to_dev_stdout_writes_to_stdout_and_keeps_the_link(tmp_path: Path, profile_file: Path) -> None:
    link = tmp_path / "stdout-link"
    link.symlink_to("/proc/self/fd/1")
    for target in ("/dev/stdout", str(link)):
        done = attnprof(["report", str(profile_file), "-f", "json", "-o", target], tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["workload"]["target"] == "zoo:decoder"
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    # stdout redirected to a file: the JSON lands in that file, after what was there
    with (tmp_path / "captured.txt").open("w") as captured:
        captured.write("before\n")
        captured.flush()
        subprocess.run(
            [sys.executable, "-m", "attnprof", "report", str(profile_file), "-f", "json", "-o", str(link)],
            cwd=tmp_path, env=ENV, stdout=captured, timeout=600, check=True,
        )
    text = (tmp_path / "captured.txt").read_text()
    assert text.startswith("before\n") and json.loads(text.removeprefix("before\n"))["schema_version"] == 1


def test_output_through_a_symlink_replaces_the_file_it_names(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_output_to_a_dangling_symlink_is_refused(runner: CliRunner, tmp_path: Path, profile_file: Path) -> None:
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "nowhere" / "x.json")
    result = runner.invoke(app, ["report", str(profile_file), "-f", "json", "-o", str(link)])
    assert result.exit_code == 4 and "which does not exist" in result.stderr
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_an_endless_device_as_input_is_refused_after_a_bound(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zero = tmp_path / "zero"
    try:
        os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # the zero device's numbers
    except PermissionError:
        pytest.skip("mknod of a character device is not permitted here")
    monkeypatch.setattr("attnprof.store.MAX_FILE_BYTES", 1 << 20)
    result = runner.invoke(app, ["report", str(zero)])
    assert result.exit_code == 2 and "larger than" in result.stderr
    one_line_error(result.stderr)


# --- 2. a plan or baseline never runs code it names, unless that code is inside the project ---

EVIL = """
open(os.environ["ATTNPROF_TEST_MARKER"], "w").write("imported")
def build_model(device, dtype):
    return nn.Linear(8, 8)
"""


def _plan_naming(target: str, folder: Path) -> Path:
    from attnprof.plans.records import Plan, PlanChoices
    from attnprof.settings import Settings
    from attnprof.targets.records import WorkloadInfo

    plan = Plan(
        workload=WorkloadInfo(target, "0123456789ab", 0), settings=Settings(), device="cpu", objective="latency",
        choices=PlanChoices(),
    )
    path = folder / "plan.json"
    write_record(path, plan)
    return path


@pytest.fixture
def sent_model(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A model file from outside the project, and the marker file importing it would create."""
    elsewhere = tmp_path_factory.mktemp("sender")
    monkeypatch.setenv("ATTNPROF_TEST_MARKER", str(elsewhere / "marker"))
    return model_file(elsewhere, "evil.py", EVIL), elsewhere / "marker"


def test_apply_never_imports_a_target_named_only_by_the_plan_outside_the_project(
    runner: CliRunner, tmp_path: Path, sent_model: tuple[Path, Path]
) -> None:
    evil, marker = sent_model
    for named in (str(evil), "subprocess:run", "sys:exit", ""):
        result = runner.invoke(app, ["apply", str(_plan_naming(named, tmp_path))])
        assert result.exit_code == 2, result.output
        assert "does not run code a data file names" in result.stderr
        one_line_error(result.stderr)
    assert not marker.exists()
    # Inside the project, the plan's own target runs, and attnprof says so.
    inside = model_file(tmp_path, "mine.py", EVIL)
    result = runner.invoke(app, ["apply", str(_plan_naming(str(inside), tmp_path))])
    assert f"running {inside}" in result.stderr and marker.exists()


def test_check_never_imports_a_target_named_only_by_the_baseline_outside_the_project(
    runner: CliRunner, tmp_path: Path, sent_model: tuple[Path, Path]
) -> None:
    evil, marker = sent_model
    baseline = sample_profile()
    baseline.workload.target = str(evil)
    write_record(tmp_path / "b.json", baseline)
    result = runner.invoke(app, ["check", "--baseline", "b.json", "--allow-machine-mismatch"])
    assert result.exit_code == 2 and "outside this project" in result.stderr
    one_line_error(result.stderr)
    assert not marker.exists()


# --- 4. fit --isolate children die with their parent; its scratch folder goes with the next ---

PARENT = """
import sys, time
from attnprof.profiling.isolate import start_isolated
call = start_isolated("tests.isolation_targets:hang", {"seconds": 600, "pid_file": sys.argv[1]})
print(call.folder.path, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie (killed, not yet reaped) is not running
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition: object, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_isolated_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(pid_file)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    folder = Path(parent.stdout.readline().strip())
    _wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the child never started")
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)  # as the OOM killer or a CI cancel does
    parent.wait()
    _wait_until(lambda: not _alive(child), "the isolated child outlived its parent")
    assert folder.exists()  # nobody was left to clean up...
    ScratchFolder("isolate").cleanup()  # ...until the next isolated call
    assert not folder.exists()


def test_a_scratch_folder_left_by_a_killed_process_is_removed_but_never_a_live_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again, here and in the children
    env = {**ENV, "TMPDIR": str(tmp_path)}
    make = "import sys, os, signal\nfrom attnprof.store import ScratchFolder\n" \
           "f = ScratchFolder('trace'); print(f.path, flush=True)\n"
    dead = subprocess.run([sys.executable, "-c", make + "os.kill(os.getpid(), signal.SIGKILL)"],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    dead_folder = Path(dead.stdout.strip())
    assert dead.returncode == -signal.SIGKILL and dead_folder.exists()
    live = subprocess.Popen([sys.executable, "-c", make + "sys.stdin.read()"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert live.stdout is not None and live.stdin is not None
    live_folder = Path(live.stdout.readline().strip())
    assert live_folder.parent == tmp_path and not dead_folder.exists()  # the next one removed it
    ScratchFolder("trace").cleanup()
    assert live_folder.exists()  # a live owner's folder is never touched
    live.stdin.close()
    live.wait()  # gone without cleaning up: the next one removes its folder too
    ScratchFolder("trace").cleanup()
    assert not live_folder.exists()


def test_no_trace_scratch_folder_without_trace(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "attnprof", "profile", "zoo:decoder", *FAST, "--no-save"],
        cwd=tmp_path, env={**ENV, "TMPDIR": str(scratch)}, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(scratch.glob("attnprof-*")) == []


# --- 5. monitor passes SIGTERM on to the command it watches, and exits 143 ---

MONITOR = """
import sys
import pytest
from tests.fake_nvml import FakeGpu, FakeNvml
FakeNvml([FakeGpu("GPU-aaaa")]).install(pytest.MonkeyPatch())
sys.argv = ["attnprof", "monitor", "--interval", "0.1", "--", sys.executable, "-c", sys.argv[1]]
from attnprof.__main__ import main
main()
"""
WATCHED = """
import os, signal, sys, time
def stop(signum, frame):
    open(os.environ["ATTNPROF_TEST_MARKER"], "w").write("got SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(os.environ["ATTNPROF_TEST_MARKER"] + ".pid", "w").write(str(os.getpid()))
time.sleep(600)
"""


def test_monitor_passes_sigterm_to_its_command_and_exits_143(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    monitor = subprocess.Popen(
        [sys.executable, "-c", MONITOR, WATCHED], cwd=REPO, env={**ENV, "ATTNPROF_TEST_MARKER": str(marker)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    pid_file = Path(f"{marker}.pid")
    _wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the watched command never started")
    monitor.send_signal(signal.SIGTERM)
    _, stderr = monitor.communicate(timeout=120)
    assert monitor.returncode == 143, stderr
    assert marker.read_text() == "got SIGTERM"
    assert not _alive(int(pid_file.read_text()))
    assert "Traceback" not in stderr


# --- 6. --json: stdout holds the JSON, whatever the user's code prints (Python, C, subprocesses) ---

CHATTY = """
print("printed at import")
class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
    def forward(self, x):
        print("printed in forward")
        os.write(1, b"written to fd 1 in forward\\n")
        return self.linear(x)
def build_model(device, dtype):
    print("printed in build_model")
    os.system("echo from a subprocess")
    return Chatty().to(device=device, dtype=dtype)
"""


def test_json_stdout_holds_only_the_json_when_the_model_prints(tmp_path: Path) -> None:
    model_file(tmp_path, "chatty.py", CHATTY)
    done = attnprof(["profile", "chatty.py", *FAST, "--no-save", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workload"]["target"] == "chatty.py"
    for printed in ("printed at import", "printed in build_model", "printed in forward",
                    "written to fd 1 in forward", "from a subprocess"):
        assert printed in done.stderr and printed not in done.stdout


# --- 7. a measurement store is never followed out of its profiles folder ---


def test_a_symlinked_measurement_store_is_not_followed_out_of_its_folder(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "precious.txt"
    outside.write_bytes(b"line one\nunfinished last line")
    store_file = tmp_path / "profiles" / "w-abc" / "measurements-m1.jsonl"
    store_file.parent.mkdir(parents=True)
    store_file.symlink_to(outside)
    store = MeasurementStore(store_file)
    with pytest.raises(InputFileError, match="outside"):
        store.load()
    with pytest.raises(InputFileError, match="outside"):
        append_line(store_file, "{}", inside=tmp_path / "profiles")
    assert outside.read_bytes() == b"line one\nunfinished last line"
    # a symlink that stays inside the folder is followed
    inner = tmp_path / "profiles" / "w-abc" / "real.jsonl"
    link = tmp_path / "profiles" / "w-abc" / "measurements-m2.jsonl"
    link.symlink_to(inner)
    append_line(link, "{}", inside=tmp_path / "profiles")
    assert inner.read_text() == "{}\n"


# --- 8. an output path equal to an input is refused ---


def test_an_output_path_equal_to_an_input_is_refused(runner: CliRunner, tmp_path: Path, profile_file: Path) -> None:
    model = model_file(tmp_path, "model.py", "def build_model(device, dtype):\n    return nn.Linear(8, 8)\n")
    before = model.read_text()
    plan = _plan_naming("zoo:decoder", tmp_path)
    plan_text = plan.read_text()
    (tmp_path / "alias.json").symlink_to(profile_file)
    cases = [
        ["profile", "model.py", *FAST, "--out", "model.py"],
        ["profile", "model.py", *FAST, "--html", "./model.py"],
        ["report", "p.json", "-f", "csv", "-o", "p.json"],
        ["report", "p.json", "-f", "csv", "-o", "alias.json"],
        ["apply", "plan.json", "--out", "plan.json"],
        ["compare", "p.json", "p.json", "--markdown", "r.md", "--junit", "r.md"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "would write over" in result.stderr
        one_line_error(result.stderr)
    assert model.read_text() == before and plan.read_text() == plan_text
    assert json.loads(profile_file.read_text())["schema_version"] == 1 and not (tmp_path / "r.md").exists()


# --- 9, 14. numbers: bounded, finite, refused in one line ---


@pytest.mark.parametrize(
    "args",
    [
        ["profile", "--batch-size", str(10**26)],
        ["profile", "--batch-size", str(2**63 - 1)],
        ["profile", "--seq-len", "-3"],
        ["profile", "--threads", "100000"],
        ["profile", "--repeats", "1e3"],
        ["tune", "--top-k", "0"],
        ["tune", "--uncertainty", "nan"],
        ["fit", "--max-measurements", str(2**64)],
        ["compare", "a.json", "b.json", "--alpha", "inf"],
        ["report", "p.json", "--peak-tflops", "nan", "--peak-bandwidth", "1"],
        ["monitor", "--interval", "nan"],
        ["monitor", "--interval", "-1"],
        ["monitor", "--duration", "nan"],
        ["monitor", "--duration", "inf"],
        ["monitor", "--duration", "-5"],
        ["monitor", "--pid", str(2**40)],
    ],
    ids=lambda args: " ".join(args),
)
def test_numbers_beyond_their_range_are_refused_in_one_line(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    one_line_error(result.stderr)


def test_a_saved_setting_beyond_its_range_is_a_corrupt_file(runner: CliRunner, profile_file: Path) -> None:
    data = json.loads(profile_file.read_text())
    data["settings"]["batch_size"] = 2**40  # a 64-bit integer, but no batch anyone ran
    profile_file.write_text(json.dumps(data))
    result = runner.invoke(app, ["report", str(profile_file)])
    assert result.exit_code == 2 and "--batch-size must be an integer from 1 to" in result.stderr
    one_line_error(result.stderr)


# --- 11. Ctrl-C and SIGTERM during start-up and teardown: quiet 130 / 143 ---


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has installed its own SIGTERM handler (attnprof's first act)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_start_up_exits_quietly(tmp_path: Path, signum: int, code: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "attnprof", "profile", "zoo:decoder", *FAST, "--no-save"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _wait_until(lambda: process.poll() is not None or _handles_sigterm(process.pid), "attnprof never started")
    process.send_signal(signum)  # the imports (torch among them) take far longer than this
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.count("attnprof: error:") <= 1, stderr


TEARDOWN = """
import os, signal, time
from attnprof.__main__ import exit_at_once_on_signals
exit_at_once_on_signals()
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_teardown_exits_at_once_quietly(signum: int, code: int) -> None:
    process = subprocess.Popen([sys.executable, "-c", TEARDOWN], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code and stderr == ""


# --- 13. control characters from user data never reach the terminal raw ---

ESCAPING = """
class Loud(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module("\\x1b[31mred\\x1b[0m", nn.Linear(8, 8))
    def forward(self, x):
        if os.environ.get("ATTNPROF_TEST_RAISE"):
            raise ValueError("bad \\x1b[2J value\\nsecond line\\rthird")
        return getattr(self, "\\x1b[31mred\\x1b[0m")(x)
def build_model(device, dtype):
    return Loud().to(device=device, dtype=dtype)
"""


def test_control_characters_from_user_data_are_escaped(tmp_path: Path) -> None:
    model_file(tmp_path, "loud.py", ESCAPING)
    done = attnprof(["profile", "loud.py", *FAST, "--no-save"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\\x1b[31mred" in done.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "attnprof", "profile", "loud.py", *FAST, "--no-save"],
        cwd=tmp_path, env={**ENV, "ATTNPROF_TEST_RAISE": "1"}, capture_output=True, text=True, timeout=600, check=False,
    )
    assert failed.returncode == 3
    assert "\x1b" not in failed.stderr and "\r" not in failed.stderr
    error = [line for line in failed.stderr.splitlines() if line.startswith("attnprof: error:")]
    assert len(error) == 1 and "bad \\x1b[2J value\\nsecond line\\rthird" in error[0]


def test_junit_xml_is_well_formed_whatever_the_metric_names(tmp_path: Path) -> None:
    result = sample_check()
    hostile = MetricCheck(
        metric="layers.\x1b[31mattn\x00\x07", kind="time", statistic="median", status="regression",
        baseline=1.0, current=2.0, unit="ms", detail="slower \ud800\uffff\x0b by far",
    )
    result.metrics.append(hostile)
    root = ET.fromstring(check_junit(result).split("\n", 1)[1])
    names = [case.get("name") for case in root.iter("testcase")]
    assert any(name and "\\x1b[31mattn\\x00\\x07" in name for name in names)


# --- 15. relative output paths are taken from where the command started ---

WANDERER = """
def build_model(device, dtype):
    os.makedirs("elsewhere", exist_ok=True)
    os.chdir("elsewhere")
    return nn.Linear(8, 8).to(device=device, dtype=dtype)
"""


def test_relative_outputs_are_taken_from_where_the_command_started(tmp_path: Path) -> None:
    model_file(tmp_path, "wanderer.py", WANDERER)
    done = attnprof(["profile", "wanderer.py", *FAST, "--out", "p.json", "--html", "p.html"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p.json").is_file() and (tmp_path / "p.html").is_file()
    assert not (tmp_path / "elsewhere" / "p.json").exists()


# --- 17. an empty target is refused, not the default workload ---


@pytest.mark.parametrize("target", ["", " "], ids=["empty", "blank"])
def test_an_empty_target_is_refused(runner: CliRunner, target: str) -> None:
    result = runner.invoke(app, ["profile", target, "--device", "meta", "--no-save"])
    assert result.exit_code == 2 and "the target is empty" in result.stderr
    one_line_error(result.stderr)
