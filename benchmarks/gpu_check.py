"""The GPU check: attnprof's GPU-side claims measured on a real NVIDIA GPU, in one go.

    bash scripts/gpu-check.sh [--dry-run] [--only NAME[,NAME...]] [--results benchmarks/RESULTS.md]

Each check in CHECKS runs within its own time budget (all together about 8 minutes on an
H100/H200) and yields pass, fail or skip with its figures. The script prints one table, writes it
with the device, driver, CUDA and torch versions to the "GPU check" section of
benchmarks/RESULTS.md (replacing the previous one), and exits 1 when any check failed, 4 when
there is no NVIDIA GPU (one line), 0 otherwise. `--dry-run` lists the checks and runs nothing.

Nothing is installed: it runs with whatever Python has torch with CUDA (scripts/gpu-check.sh
picks it) and the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from attnprof.profiling.records import Profile
from attnprof.store import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## GPU check"
NO_GPU_EXIT = 4
USAGE_EXIT = 2

Verdict = Literal["pass", "fail", "skip"]


class UnknownCheck(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    figures: str


@dataclass(frozen=True)
class GpuCheck:
    name: str
    what: str  # one line: what is measured and the bound it is held to
    budget_s: int
    run: Callable[[int], Outcome]  # takes its budget in seconds


# --- pieces that need no GPU (tested on CPU) ---------------------------------------------------


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool) -> int:
    """attnprof's definition (docs/architecture.md): 2·(d_k + d_v) FLOPs per unmasked
    query-key pair; a causal mask keeps, for query i, the keys j <= i + (kv_len - q_len)."""
    if causal:
        offset = kv_len - q_len
        pairs = sum(max(0, min(kv_len, i + offset + 1)) for i in range(q_len))
    else:
        pairs = q_len * kv_len
    return batch * heads * pairs * 4 * head_dim


def tflops(flops: int, seconds: float) -> float:
    return flops / seconds / 1e12


def within(measured: float, reference: float, tolerance: float) -> bool:
    return reference > 0 and abs(measured / reference - 1) <= tolerance


def render_table(rows: list[tuple[GpuCheck, Outcome]]) -> str:
    lines = ["| check | result | figures |", "| --- | --- | --- |"]
    for check, outcome in rows:
        figures = outcome.figures.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {check.name} | {outcome.verdict} | {figures} |")
    return "\n".join(lines)


def write_section(results: Path, body: str) -> None:
    """Replace the GPU check section of RESULTS.md (up to the next `## ` heading), or append it;
    written atomically, so an interrupted run keeps the old file."""
    text = results.read_text(encoding="utf-8") if results.exists() else ""
    section = f"{SECTION}\n\n{body.strip()}\n"
    found = re.search(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    if found is None:
        new = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    else:
        rest = text[found.end():]
        new = text[:found.start()] + section + ("\n" + rest if rest else "")
    atomic_write_text(results, new)


def environment_line() -> str:
    from attnprof.measure import nvml

    try:
        with nvml.session():
            driver = nvml.driver_version()
    except nvml.NvmlError as exc:
        driver = f"unknown ({exc})"
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return (f"{day}: {name}, driver {driver}, CUDA {torch.version.cuda}, torch {torch.__version__}, "
            f"Python {sys.version.split()[0]}.")


# --- helpers for the checks --------------------------------------------------------------------


def _python_m(*args: str, timeout_s: int, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS`. attnprof commands run from a scratch folder (`cwd`), so that they use
    attnprof's own defaults, not this repository's [tool.attnprof] CI settings."""
    environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _profile(target: str, trace: bool = False, **overrides: object) -> Profile:
    from attnprof.profiling.run import run_profile
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload

    workload = load_workload(target)
    settings = resolve_settings(workload, {"device": "cuda", **overrides})
    return run_profile(workload, settings, trace=trace)


def _median_time(step: Callable[[], object], repeats: int) -> float:
    from attnprof.measure.timing import time_call

    device = torch.device("cuda")
    for _ in range(3):
        step()
    return statistics.median(time_call(step, device) for _ in range(repeats))


class _Attention(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


# --- the checks --------------------------------------------------------------------------------


def gpu_tests(budget_s: int) -> Outcome:
    done = _python_m("pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests", timeout_s=budget_s)
    summary = _last_line(done.stdout)
    passed = re.search(r"(\d+) passed", summary)
    ok = done.returncode == 0 and passed is not None and int(passed.group(1)) > 0
    return Outcome("pass" if ok else "fail", summary or _last_line(done.stderr))


def overhead(budget_s: int) -> Outcome:
    from benchmarks.overhead_gpu import measure_overhead

    figures = measure_overhead("zoo:decoder", "cuda", batch_size=8, seq_len=1024, dtype="bf16", rounds=8, steps=5)
    light = figures.overhead("light")
    trace = figures.overhead("trace")
    text = (f"light {100 * light:+.2f}% (target <= 1%), trace window {100 * trace:+.1f}% (target <= 5%), "
            f"trace fixed cost {figures.window_cost_s * 1e3:.0f} ms, NVML probe {figures.probe_s * 1e3:.1f} ms; "
            f"step {figures.plain_ms:.2f} ms")
    return Outcome("pass" if light <= 0.01 and trace <= 0.05 else "fail", text)


def layer_times(budget_s: int) -> Outcome:
    profile = _profile("zoo:decoder", dtype="fp16", batch_size=4, seq_len=512, warmup=3, repeats=30)
    step = profile.totals.time_ms.median
    summed = sum(layer.self_time_ms or 0.0 for layer in profile.layers)
    ok = profile.timing_source == "cuda_events" and within(summed, step, 0.05)
    return Outcome("pass" if ok else "fail",
                   f"sum of self times {summed:.3f} ms vs step {step:.3f} ms ({100 * (summed / step - 1):+.1f}%, "
                   f"tolerance 5%); source {profile.timing_source}")


def allocator_peak(budget_s: int) -> Outcome:
    from attnprof.profiling.run import prepare
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload

    overrides = {"device": "cuda", "dtype": "fp16", "batch_size": 4, "seq_len": 512, "mode": "train"}
    profile = _profile("zoo:decoder", **overrides, warmup=2, repeats=5)
    workload = load_workload("zoo:decoder")
    prepared = prepare(workload, resolve_settings(workload, overrides))
    for _ in range(2):
        prepared.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    prepared.step()
    torch.cuda.synchronize()
    truth = torch.cuda.max_memory_allocated()
    reported = profile.totals.peak_memory_bytes
    ok = within(reported, truth, 0.05)
    return Outcome("pass" if ok else "fail",
                   f"profile peak {reported / 2**20:.1f} MiB vs max_memory_allocated {truth / 2**20:.1f} MiB "
                   f"({100 * (reported / truth - 1):+.1f}%, tolerance 5%), train step")


def energy(budget_s: int) -> Outcome:
    from attnprof.measure.nvml import Telemetry, integrate_power
    from attnprof.profiling.run import prepare
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload

    workload = load_workload("zoo:decoder")
    prepared = prepare(workload, resolve_settings(workload, {"device": "cuda", "dtype": "bf16", "batch_size": 16,
                                                            "seq_len": 1024, "mode": "train"}))
    for _ in range(3):
        prepared.step()
    torch.cuda.synchronize()
    with Telemetry(prepared.device) as telemetry:
        if telemetry.reason is not None:
            return Outcome("fail", f"no telemetry: {telemetry.reason}")
        telemetry.window_start()
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < 4.0:
            prepared.step()
            torch.cuda.synchronize()
            steps += 1
        telemetry.window_end(steps)
        result = telemetry.energy()
        integrated = integrate_power(telemetry.window_samples())
        record = telemetry.record()
    if result.energy_j is None or integrated is None or record is None:
        return Outcome("fail", f"energy {result.energy_j} ({result.reason}); integrated {integrated}")
    per_step = integrated / steps
    present = record.power_w is not None and record.clocks.sm_mhz is not None and record.clocks.memory_mhz is not None
    ok = result.source == "counter" and within(result.energy_j, per_step, 0.05) and present
    return Outcome("pass" if ok else "fail",
                   f"{result.source} {result.energy_j:.3f} J/step vs integrated power {per_step:.3f} J/step "
                   f"({100 * (result.energy_j / per_step - 1):+.1f}%, tolerance 5%) over {steps} steps; "
                   f"power {record.power_w} W, SM {record.clocks.sm_mhz} MHz, memory {record.clocks.memory_mhz} MHz")


def sdpa_backends(budget_s: int) -> Outcome:
    from attnprof import backends

    seen, wrong, skipped = [], [], []
    for name in backends.names_on("cuda"):
        try:
            profile = _profile("hf:llama", trace=True, backend=name, dtype="fp16", batch_size=2, seq_len=256,
                               warmup=2, repeats=3)
        except Exception as exc:  # a backend this GPU or build cannot run is reported, not failed
            skipped.append(f"{name} ({type(exc).__name__}: {str(exc)[:60]})")
            continue
        detected = set(profile.trace.backends.values()) if profile.trace is not None else set()
        (seen if detected == {name} else wrong).append(f"{name}->{','.join(sorted(detected)) or 'none'}")
    text = f"forced->detected: {'; '.join(seen + wrong)}" + (f"; not run: {'; '.join(skipped)}" if skipped else "")
    return Outcome("pass" if seen and not wrong else "fail", text)


def flash_tflops(budget_s: int) -> Outcome:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnprof.measure import hardware
    from attnprof.profiling.run import run_profile
    from attnprof.settings import resolve_settings
    from attnprof.targets.workload import Workload

    batch, heads, seq, dim = 8, 16, 4096, 128
    peak = hardware.peak_for(torch.device("cuda"), "bf16")
    parts, ok = [], True
    for causal in (False, True):
        q, k, v = (torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        module = _Attention(causal)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
            seconds = _median_time(lambda: module(q, k, v), repeats=20)  # noqa: B023
        direct = tflops(attention_flops(batch, heads, seq, seq, dim, causal), seconds)
        workload = Workload(target=f"gpu-check:sdpa-{'causal' if causal else 'full'}", name="sdpa",
                            build_model=lambda device, dtype, c=causal: _Attention(c),
                            make_inputs=lambda b, s, device, dtype, t=(q, k, v): (t, {}))
        settings = resolve_settings(workload, {"device": "cuda", "dtype": "bf16", "backend": "flash",
                                               "batch_size": batch, "seq_len": seq, "warmup": 3, "repeats": 20})
        reported = run_profile(workload, settings).totals.achieved_tflops or 0.0
        share = 100 * direct / peak.tflops if peak.tflops else float("nan")
        ok = ok and within(reported, direct, 0.10) and 0 < direct <= (peak.tflops or math.inf)
        parts.append(f"{'causal' if causal else 'non-causal'}: {direct:.0f} TF/s measured, attnprof {reported:.0f} "
                     f"({share:.0f}% of the {peak.tflops} TF/s {peak.source} bf16 peak)")
    known = ("FlashAttention-2 forward at head dim 128, 4k tokens on an H100 SXM reaches about 370 TF/s "
             "non-causal and 320 causal (FlashAttention-3 paper, forward-speed figures)")
    shape = f"B{batch} H{heads} S{seq} D{dim}"
    return Outcome("pass" if ok else "fail", f"{shape}: {'; '.join(parts)}; known: {known}")


def tune_vs_exhaustive(budget_s: int) -> Outcome:
    from attnprof import backends
    from attnprof.measure.timing import time_call
    from attnprof.plans.records import Plan
    from attnprof.profiling.run import prepare
    from attnprof.settings import resolve_settings, with_plan_choices
    from attnprof.store import read_record
    from attnprof.targets.load import load_workload
    from attnprof.tuning.estimate import tf32_matmuls

    size = {"device": "cuda", "batch_size": 8, "seq_len": 1024}
    with tempfile.TemporaryDirectory() as scratch:
        plan_path = Path(scratch) / "plan.json"
        done = _python_m("attnprof", "tune", "hf:llama", "--knobs", "backend,dtype", "--device", "cuda",
                         "--batch-size", "8", "--seq-len", "1024", "--out", str(plan_path),
                         timeout_s=budget_s // 2, cwd=Path(scratch))
        if done.returncode != 0:
            return Outcome("fail", f"tune exit {done.returncode}: {_last_line(done.stderr)}")
        plan = read_record(plan_path, Plan)
    tuned = (plan.choices.backend, plan.choices.dtype)
    workload = load_workload("hf:llama")
    base = resolve_settings(workload, size)
    steps: dict[tuple[str, str], Callable[[], object]] = {}
    for name in backends.names_on("cuda"):
        for dtype in ("fp32", "tf32", "fp16", "bf16"):
            try:
                prepared = prepare(workload, with_plan_choices(base, name, dtype=dtype))
                with tf32_matmuls(dtype == "tf32"):
                    prepared.step()
            except Exception:  # combinations the GPU cannot run are outside the space
                continue
            steps[(name, dtype)] = prepared.step
    times: dict[tuple[str, str], list[float]] = {key: [] for key in steps}
    device = torch.device("cuda")
    for _ in range(15):  # interleaved rounds, shuffled: drift hits every configuration alike
        order = list(steps)
        random.shuffle(order)
        for key in order:
            with tf32_matmuls(key[1] == "tf32"):
                times[key].append(time_call(steps[key], device))
    medians = {key: statistics.median(samples) for key, samples in times.items()}
    best = min(medians, key=medians.__getitem__)
    if tuned not in medians:
        return Outcome("fail", f"tuned plan {tuned} is not in the exhaustive table of {len(medians)} configurations")
    gap = medians[tuned] / medians[best] - 1
    return Outcome("pass" if gap <= 0.02 else "fail",
                   f"tuned {'·'.join(tuned)} {medians[tuned] * 1e3:.3f} ms vs optimum {'·'.join(best)} "
                   f"{medians[best] * 1e3:.3f} ms: gap {100 * gap:+.1f}% (target <= 2%) over {len(medians)} "
                   "configurations timed interleaved")


_GATE_MODEL = textwrap.dedent('''\
    """{role} for the GPU check's gate test: the check demo model at a GPU size."""
    import importlib.util

    import torch

    _spec = importlib.util.spec_from_file_location("check_demo_model", {demo!r})
    _demo = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_demo)
    CONFIG = _demo.ZooConfig(vocab_size=4096, hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=4)
    ATTNPROF = {{"device": "cuda", "dtype": "fp16", "batch_size": 8, "seq_len": 512, "repeats": 40, "warmup": 5}}


    def build_model(device, dtype):
        torch.manual_seed(0)
        model = _demo.ZooTransformer(CONFIG)
        slow = _demo.ExtraWorkAttention(CONFIG, {extra})
        slow.load_state_dict(model.layers[1].attn.state_dict())
        model.layers[1].attn = slow
        return model.to(device=device, dtype=dtype)


    def example_inputs(batch_size, seq_len, device, dtype):
        return (_demo.random_token_ids(batch_size, seq_len, CONFIG.vocab_size, device),)
    ''')


def _extra_matmuls_for(share: float) -> int:
    """Extra o_proj products in layers.1.attn that add `share` of the model's step."""
    from attnprof.profiling.run import prepare
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "calibrate.py"
        path.write_text(_GATE_MODEL.format(role="Calibration", demo=str(REPO / "examples" / "check_demo_model.py"),
                                           extra=0))
        workload = load_workload(str(path))
        prepared = prepare(workload, resolve_settings(workload, {}))
        step_s = _median_time(prepared.step, repeats=20)
        x = torch.randn(8, 512, 1024, device="cuda", dtype=torch.float16)
        weight = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
        product_s = _median_time(lambda: x + 1e-6 * (x @ weight), repeats=50)
    return max(1, round(share * step_s / product_s))


def check_gate(budget_s: int) -> Outcome:
    demo = str(REPO / "examples" / "check_demo_model.py")
    extra = _extra_matmuls_for(0.05)
    with tempfile.TemporaryDirectory() as scratch:
        paths = {}
        for role, units in (("base", 0), ("same", 0), ("slowed", extra)):
            paths[role] = Path(scratch) / f"gate_{role}.py"
            paths[role].write_text(_GATE_MODEL.format(role=role.capitalize(), demo=demo, extra=units))
        each = budget_s // 2
        same = _python_m("attnprof", "check", str(paths["same"]), "--against", str(paths["base"]),
                         timeout_s=each, cwd=Path(scratch))
        slowed = _python_m("attnprof", "check", str(paths["slowed"]), "--against", str(paths["base"]),
                           timeout_s=each, cwd=Path(scratch))
    named = "layers.1" in slowed.stdout + slowed.stderr
    ok = same.returncode == 0 and slowed.returncode == 1 and named
    return Outcome("pass" if ok else "fail",
                   f"A/A exit {same.returncode} (want 0); planted +5% ({extra} extra products in layers.1.attn) "
                   f"exit {slowed.returncode} (want 1), block named: {named}; {_last_line(slowed.stdout)}")


CHECKS: tuple[GpuCheck, ...] = (
    GpuCheck("gpu-tests", "the GPU test suite (pytest -m gpu) passes", 90, gpu_tests),
    GpuCheck("overhead", "light-mode overhead <= 1%, trace window <= 5% (benchmarks/overhead_gpu.py)", 45, overhead),
    GpuCheck("layer-times", "per-layer CUDA-event self times sum to the step within 5%", 20, layer_times),
    GpuCheck("allocator-peak", "profile peak memory = torch.cuda.max_memory_allocated within 5%", 20, allocator_peak),
    GpuCheck("energy", "NVML energy counter = integrated power within 5%; power and clocks present", 20, energy),
    GpuCheck("sdpa-backends", "each SDPA backend forced on hf:llama is the one attnprof reports", 40, sdpa_backends),
    GpuCheck("flash-tflops", "flash bf16 attention TF/s (B8 H16 S4096 D128, causal and not) vs the peak", 30,
             flash_tflops),
    GpuCheck("tune", "tune over backend x dtype on hf:llama within 2% of the exhaustive interleaved optimum", 120,
             tune_vs_exhaustive),
    GpuCheck("check-gate", "check --against: A/A passes, a planted 5% slowdown fails naming the block", 80,
             check_gate),
)


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A check that outruns its budget by half again is stopped (SIGALRM): the script keeps its
    total, and the checks after it still run."""
    import signal

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"over its {seconds} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds + seconds // 2)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_check(check: GpuCheck) -> Outcome:
    started = time.perf_counter()
    try:
        with _deadline(check.budget_s):
            outcome = check.run(check.budget_s)
    except Exception as exc:  # one broken check must not hide the others' figures
        outcome = Outcome("fail", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next check starts with the allocator's cache released
    return Outcome(outcome.verdict, f"{outcome.figures} [{time.perf_counter() - started:.0f} s]")


def selected(only: str | None) -> list[GpuCheck]:
    if not only:
        return list(CHECKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(names) - {check.name for check in CHECKS})
    if unknown:
        raise UnknownCheck(f"gpu-check: unknown check(s) {', '.join(unknown)}; known: "
                           f"{', '.join(check.name for check in CHECKS)}")
    return [check for check in CHECKS if check.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="List the checks and run nothing.")
    parser.add_argument("--only", help="Comma-separated check names to run.")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Where the GPU section is written.")
    args = parser.parse_args(argv)
    try:
        checks = selected(args.only)
    except UnknownCheck as exc:
        print(exc, file=sys.stderr)
        return USAGE_EXIT
    if args.dry_run:
        for check in checks:
            print(f"{check.name:<15} {check.budget_s:>4} s  {check.what}")
        print(f"{'total':<15} {sum(c.budget_s for c in checks):>4} s")
        return 0
    if torch.version.cuda is None or not torch.cuda.is_available():
        print("gpu-check: needs an NVIDIA GPU (torch with CUDA sees none); nothing was run",
              file=sys.stderr)
        return NO_GPU_EXIT
    rows: list[tuple[GpuCheck, Outcome]] = []
    environment = environment_line()
    for check in checks:
        print(f"running {check.name}: {check.what}", file=sys.stderr, flush=True)
        outcome = run_check(check)
        rows.append((check, outcome))
        print(f"  {outcome.verdict}: {outcome.figures}", file=sys.stderr, flush=True)
        # Written after every check: a run cut short by the device's time limit keeps what it measured.
        write_section(args.results, f"{environment}\n\n{render_table(rows)}")
    print(render_table(rows))
    return 1 if any(outcome.verdict == "fail" for _, outcome in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
