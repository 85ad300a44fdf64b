"""Tensor parallel, FSDP2 and DDP for real: torch.distributed with gloo, two spawned processes
(four for the 2-D tensor-parallel x FSDP mesh).

Each rank builds the same seeded model twice, shards one with the plan and compares forward
outputs and gradients with the unsharded one (max abs diff <= 1e-5 in fp32).
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from attnprof.plans.discover import discover
from attnprof.plans.engine import apply_plan
from attnprof.plans.outputs import main_tensor
from attnprof.plans.records import PlanChoices
from attnprof.targets.zoo.models import ZooConfig, ZooTransformer
from tests import apply_models as models

# spawning ranks on a busy 2-core machine can take minutes: a longer limit than the default
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

WORLD_SIZE = 2
TOLERANCE = 1e-5
TIMEOUT_S = 600


def zoo_decoder() -> nn.Module:
    torch.manual_seed(0)
    config = ZooConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64)
    return ZooTransformer(config)


BUILDERS = {"zoo_decoder": zoo_decoder, "llama": models.llama, "gpt2": models.gpt2}


def _choices(strategy: str) -> PlanChoices:
    if strategy == "tp":
        return PlanChoices(tensor_parallel=WORLD_SIZE)
    if strategy == "tp+fsdp":  # a 2-D mesh: 2 data-parallel groups of 2 tensor-parallel ranks
        return PlanChoices(tensor_parallel=2, data_parallel=2)
    return PlanChoices(data_parallel=WORLD_SIZE, data_parallel_mode=strategy)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


# strategy -> models it runs on; one spawn runs them all (starting ranks costs more than the checks)
CASES = {"tp": ["zoo_decoder", "llama", "gpt2"], "fsdp": ["zoo_decoder", "llama"], "ddp": ["zoo_decoder", "llama"]}


def _worker(rank: int, world_size: int, port: int, out_dir: str, cases: dict[str, list[str]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=300))
    try:
        results = {strategy: _compare(strategy, names) for strategy, names in cases.items()}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.barrier()  # neither rank tears its gloo pairs down while the other still uses them
    finally:
        dist.destroy_process_group()
    # The results are on disk. A rank once aborted after writing them ("terminate called without
    # an active exception", SIGABRT): gloo threads the sharded models still reference were torn
    # down in the interpreter's finalization. Leaving without it keeps a finished rank's exit 0.
    os._exit(0)


def _compare(strategy: str, names: list[str]) -> dict[str, dict]:
    results = {}
    ids = models.token_ids(batch=2, seq=8)
    for name in names:
        reference, model = BUILDERS[name](), BUILDERS[name]()
        model, report = apply_plan(model, _choices(strategy))
        sharded_out = main_tensor(model(ids))
        reference_out = main_tensor(reference(ids))
        sharded_out.float().square().mean().backward()
        reference_out.float().square().mean().backward()
        reference_grads = dict(reference.named_parameters())
        grad_diff = 0.0
        for param_name, param in model.named_parameters():
            expected = reference_grads[param_name.removeprefix("module.")].grad
            grad_diff = max(grad_diff, float((_full(param.grad) - expected).abs().max()))
        inner = getattr(model, "module", model)
        results[name] = {
            "output_diff": float((_full(sharded_out) - reference_out).abs().max()),
            "grad_diff": grad_diff,
            "local_heads": [s.layout.num_heads for s in discover(inner).sites],
            "applied": report.applied,
            "not_applied": [[n.module, n.what, n.reason] for n in report.not_applied],
        }
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(world_size: int, cases: dict[str, list[str]], out_dir: Path) -> list[dict]:
    """Every case's comparison, as each rank measured it."""
    context = mp.start_processes(
        _worker,
        args=(world_size, _free_port(), str(out_dir), cases),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish in {TIMEOUT_S} s")
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(WORLD_SIZE, CASES, tmp_path_factory.mktemp("ranks"))


def test_tensor_parallel_matches_the_unsharded_model(ranks: list[dict]) -> None:
    for rank_results in (r["tp"] for r in ranks):
        for name in ("zoo_decoder", "llama"):
            result = rank_results[name]
            assert result["output_diff"] <= TOLERANCE and result["grad_diff"] <= TOLERANCE, (name, result)
            assert result["not_applied"] == [], name
            assert result["applied"] == ["tensor parallel over 2 ranks: 2 attention layers, 2 MLPs"]
        # each rank reshapes with its local head count
        assert rank_results["zoo_decoder"]["local_heads"] == [2, 2]
        # GPT-2's fused Conv1D cannot be split: every layer is named, stays replicated, and stays right
        gpt2 = rank_results["gpt2"]
        assert [m for m, what, _ in gpt2["not_applied"]] == ["transformer.h.0.attn", "transformer.h.1.attn"]
        assert all("Conv1D" in reason for _, _, reason in gpt2["not_applied"])
        assert gpt2["output_diff"] <= TOLERANCE and gpt2["grad_diff"] <= TOLERANCE


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_data_parallel_matches_the_unsharded_model(strategy: str, ranks: list[dict]) -> None:
    for rank_results in (r[strategy] for r in ranks):
        for name, result in rank_results.items():
            assert result["output_diff"] <= TOLERANCE and result["grad_diff"] <= TOLERANCE, (name, result)
            assert result["not_applied"] == []


def test_tensor_parallel_inside_fsdp_on_a_2d_mesh(tmp_path: Path) -> None:
    for rank_results in run_ranks(4, {"tp+fsdp": ["zoo_decoder"]}, tmp_path):
        result = rank_results["tp+fsdp"]["zoo_decoder"]
        assert result["output_diff"] <= TOLERANCE and result["grad_diff"] <= TOLERANCE, result
        assert result["applied"] == [
            "tensor parallel over 2 ranks: 2 attention layers, 2 MLPs",
            "FSDP2 fully_shard over 2 ranks: 2 blocks and the root",
        ]
