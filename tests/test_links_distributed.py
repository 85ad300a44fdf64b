"""Calibrated links: `doctor --calibrate --link` under torchrun (gloo, two CPU ranks) stores α-β
per collective; tune prices sharding with them where they exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.cli.tune import _chosen_link
from attnprof.machine import machine_info
from attnprof.measure.hardware import CACHE_DIR_ENV, load_calibration
from attnprof.measure.links import fit_link, ring_terms
from attnprof.measure.records import LinkCalibration, LinkFit
from attnprof.tuning.sharding import GLOO_LOOPBACK, MeasuredLink, StepShape, sharded_step

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("collective", ["all_reduce", "all_gather", "reduce_scatter"])
@pytest.mark.parametrize("ranks", [2, 4])
def test_the_fit_recovers_alpha_and_beta_of_the_ring_formula(collective: str, ranks: int) -> None:
    alpha_us, beta_gbps = 40.0, 2.5
    messages, share = ring_terms(collective, ranks)
    sizes = [4096, 65536, 1 << 20, 4 << 20]
    seconds = [messages * alpha_us * 1e-6 + share * n / (beta_gbps * 1e9) for n in sizes]
    fit = fit_link(collective, ranks, sizes, seconds)
    assert fit.alpha_us == pytest.approx(alpha_us, rel=1e-6)
    assert fit.beta_gbps == pytest.approx(beta_gbps, rel=1e-6)


def _measured(reduce_scatter_alpha_us: float) -> MeasuredLink:
    fits = {
        "all_reduce": LinkFit(100.0, 1.0, [], []),
        "all_gather": LinkFit(100.0, 1.0, [], []),
        "reduce_scatter": LinkFit(reduce_scatter_alpha_us, 1.0, [], []),
    }
    return MeasuredLink.from_calibration(LinkCalibration("gloo", "cpu", 2, fits, 1, "now"))


def test_each_collective_is_priced_with_its_own_measured_figures() -> None:
    shape = StepShape((1.0, 1.0), 0.5, 8e6, 1e6, 1e5, 1, True)
    cheap, dear = _measured(100.0), _measured(100_000.0)
    fsdp = [sharded_step(shape, 1, 1, 2, "fsdp", link).latency_ms for link in (cheap, dear)]
    ddp = [sharded_step(shape, 1, 1, 2, "ddp", link).latency_ms for link in (cheap, dear)]
    assert fsdp[1] - fsdp[0] == pytest.approx(100_000e-3 - 100e-3)  # one reduce-scatter, one message
    assert ddp[0] == ddp[1]  # DDP all-reduces: the reduce-scatter's figures do not enter


def test_ranks_compute_as_much_slower_as_the_calibration_measured() -> None:
    shape = StepShape((4.0, 4.0), 1.0, 8e6, 1e6, 1e5, 1, False)
    fits = _measured(100.0).collectives
    calibration = LinkCalibration("gloo", "cpu", 2, {k: LinkFit(*v, [], []) for k, v in fits.items()}, 1, "now")
    quiet = sharded_step(shape, 2, 1, 1, "fsdp", MeasuredLink.from_calibration(calibration))
    calibration.compute_slowdown = 2.0
    shared = sharded_step(shape, 2, 1, 1, "fsdp", MeasuredLink.from_calibration(calibration))
    # Each rank: half of each block, and the embeddings and head (other_ms) whole.
    assert quiet.latency_ms - quiet.communication_ms == pytest.approx(4.0 + 1.0)
    assert shared.latency_ms - shared.communication_ms == pytest.approx(2 * (4.0 + 1.0))
    assert shared.communication_ms == quiet.communication_ms


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1", CACHE_DIR_ENV: str(cache)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def test_link_calibration_outside_torchrun_names_the_command(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "attnprof", "doctor", "--calibrate", "--link"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=600, check=False,
    )
    assert run.returncode == 4, run.stderr
    assert "torchrun" in run.stderr and "--link" in run.stderr
    assert not list(tmp_path.iterdir())  # nothing measured, nothing stored


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_calibrated_gloo_link_is_stored_and_used_by_tune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "attnprof", "doctor", "--calibrate", "--link"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=600, check=False, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("gloo link") >= 1 and "saved to" in run.stdout
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert _chosen_link(None, "cpu", 4) is GLOO_LOOPBACK  # four ranks were never measured
    calibration = load_calibration(machine_info())
    assert calibration is not None
    measured = calibration.links["gloo:cpu:2"]
    assert set(measured.collectives) == {"all_reduce", "all_gather", "reduce_scatter"}
    assert measured.compute_slowdown >= 1.0
    for fit in measured.collectives.values():
        assert fit.beta_gbps > 0 and fit.alpha_us >= 0 and len(fit.seconds) == len(fit.sizes) >= 3
        assert all(t > 0 for t in fit.seconds)
    link = _chosen_link(None, "cpu", 2)
    assert isinstance(link, MeasuredLink) and "measured" in link.source
    assert link.collectives["all_gather"] == (
        measured.collectives["all_gather"].alpha_us, measured.collectives["all_gather"].beta_gbps
    )
