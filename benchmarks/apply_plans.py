"""Applied plans side by side on one CPU: step time of each plan relative to the unmodified model,
and its output error, for zoo:decoder (inference, batch 4, seq 256).

Every variant is built and applied first; then rounds time each variant once in turn, so drift
in the machine's speed (other processes) affects all alike. Reported: median ratio to baseline.

    python benchmarks/apply_plans.py [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnprof.measure.timing import time_call
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.records import Budget, PlanChoices
from attnprof.plans.verify import verify_model
from attnprof.targets.load import load_workload

PLANS = {
    "baseline": PlanChoices(),
    "backend math": PlanChoices(backend="math"),
    "backend flash": PlanChoices(backend="flash"),
    "prune 4 of 8 heads": PlanChoices(prune_heads={"*": 4}),
    "GQA 4 -> 2 kv heads": PlanChoices(kv_heads={"*": 2}),
    "bf16 autocast": PlanChoices(dtype="bf16"),
    "bf16 cast": PlanChoices(dtype="bf16", precision="cast"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="zoo:decoder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    device = torch.device("cpu")
    workload = load_workload(options.target)
    args, kwargs = workload.make_inputs(options.batch_size, options.seq_len, device, torch.float32)
    example = Example(tuple(args), dict(kwargs))

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return workload.build_model(device, torch.float32).eval()

    reference = build()
    models, errors = {}, {}
    for name, choices in PLANS.items():
        model, _ = apply_plan(build(), choices, example, workload.loss_fn)
        models[name] = model
        errors[name] = verify_model(reference, model, example, Budget(), choices).max_rel_error

    def step(model: torch.nn.Module) -> None:
        with torch.no_grad():
            example.run(model)

    for model in models.values():  # warm-up
        step(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(options.repeats):
        for name, model in models.items():
            times[name].append(1e3 * time_call(lambda m=model: step(m), device))
    base = statistics.median(times["baseline"])
    print(f"{options.target}, batch {options.batch_size}, seq {options.seq_len}, {options.threads} thread(s), "
          f"{options.repeats} interleaved rounds, torch {torch.__version__}")
    print("| plan | median ms | ratio to baseline | max rel output error |")
    print("| --- | ---: | ---: | ---: |")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.2f} | {median / base:.2f} | {errors[name]:.2e} |")


if __name__ == "__main__":
    main()
