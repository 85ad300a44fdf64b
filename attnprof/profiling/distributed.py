"""`attnprof profile` under torchrun: every rank profiles its share, rank 0 gathers them.

Each rank runs the same profile (the same steps, so collectives pair up), then rank 0 collects
every rank's Profile with `torch.distributed.gather_object` and returns them as one
`DistributedProfile`; the other ranks return None and print nothing.
"""

from __future__ import annotations

import torch.distributed as dist

from attnprof.errors import EnvironmentUnsupported
from attnprof.profiling.ranks import distributed
from attnprof.profiling.records import DistributedProfile, Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.store import from_json_dict, timestamp, to_json_dict
from attnprof.targets.workload import Workload
from attnprof.version import __version__


def gather_profiles(profile: Profile) -> DistributedProfile | None:
    """Every rank's profile on rank 0, in rank order; None on the other ranks."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    gathered: list[object] | None = [None] * world_size if rank == 0 else None
    # Sent as JSON data, read back through the record codec like any saved file.
    dist.gather_object(to_json_dict(profile), gathered, dst=0)
    if gathered is None:
        return None
    ranks = [from_json_dict(Profile, data, f"rank {index}'s profile") for index, data in enumerate(gathered)]
    return DistributedProfile(attnprof_version=__version__, created=timestamp(), ranks=ranks)


def profile_ranks(workload: Workload, settings: Settings, plan: str | None = None) -> DistributedProfile | None:
    """Profile this rank's `workload` (its model already sharded as `plan` says, or whole) and
    gather every rank's profile on rank 0. Call on every rank of an initialised process group."""
    if not distributed():
        raise EnvironmentUnsupported(
            "a distributed profile needs an initialised process group of more than one rank (run under torchrun)"
        )
    return gather_profiles(run_profile(workload, settings, plan=plan))
