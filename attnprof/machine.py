"""The machine a measurement ran on: its record, fingerprint, and the git commit of the user's code."""

from __future__ import annotations

import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from attnprof.store import short_hash


@dataclass
class MachineInfo:
    cpu: str
    gpu_name: str | None
    gpu_uuid: str | None
    driver: str | None
    cuda: str | None
    torch: str
    python: str
    threads: int
    hostname: str = ""
    platform: str = ""

    def fingerprint(self) -> str:
        """Identifies a machine kind for comparisons: hardware and software, not the host name."""
        return short_hash([self.cpu, self.gpu_name, self.driver, self.cuda, self.torch, self.threads])


def machine_info() -> MachineInfo:
    """What this process runs on; GPU fields are filled when CUDA is available."""
    import torch

    gpu_name = gpu_uuid = driver = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu_name = props.name
        gpu_uuid = str(getattr(props, "uuid", "")) or None
    return MachineInfo(
        cpu=_cpu_name(),
        gpu_name=gpu_name,
        gpu_uuid=gpu_uuid,
        driver=driver,
        cuda=torch.version.cuda,
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        hostname=socket.gethostname(),
        platform=platform.platform(),
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the user's working directory, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
