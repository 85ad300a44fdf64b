"""Files on disk: the profiles/ layout, atomic writes, schema versions, machine fingerprint.

Every write goes to a temporary file in the destination folder, is fsynced, and is renamed
over the destination, so a reader never sees a half-written file even if the writer is
killed. Nothing is ever unpickled: files are JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from attnprof.errors import InputFileError
from attnprof.records import SCHEMA_VERSION, MachineInfo, Profile, from_json_dict, to_json_dict

R = TypeVar("R")

DEFAULT_PROFILE_DIR = Path("profiles")


def short_hash(parts: Any) -> str:
    """A stable 12-hex-digit digest of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via temp file + fsync + rename: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_record(path: Path, record: Any) -> None:
    """Save a record as JSON with its schema_version, atomically."""
    data = to_json_dict(record)
    if isinstance(data, dict):
        data.setdefault("schema_version", SCHEMA_VERSION)
    atomic_write_text(Path(path), json.dumps(data, indent=1, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Load a JSON object written by attnprof, refusing corrupt files and newer schemas."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}: corrupt file (invalid JSON at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: corrupt file (expected a JSON object)")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputFileError(f"{path}: corrupt file (no integer schema_version)")
    if version > SCHEMA_VERSION:
        raise InputFileError(
            f"{path}: schema_version {version} is newer than this attnprof understands "
            f"({SCHEMA_VERSION}); upgrade attnprof"
        )
    if version < 1:
        raise InputFileError(f"{path}: corrupt file (schema_version {version})")
    return data


def read_record(path: Path, cls: type[R]) -> R:
    return from_json_dict(cls, read_json(path), where=str(path))


def load_profile(path: Path) -> Profile:
    return read_record(path, Profile)


def profile_path(profile: Profile, folder: Path = DEFAULT_PROFILE_DIR) -> Path:
    """profiles/<workload name>-<fingerprint>/<machine>-<timestamp>.json"""
    stamp = profile.created.replace(":", "").replace("-", "")
    workload = f"{_slug(profile.workload.name or profile.workload.target)}-{profile.workload.fingerprint}"
    return Path(folder) / workload / f"profile-{profile.machine.fingerprint()}-{stamp}.json"


def _slug(text: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return slug.strip("_.")[:60] or "workload"


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


def workload_dir(folder: Path, name: str, fingerprint: str) -> Path:
    """profiles/<workload name>-<fingerprint>: where one workload's files live."""
    return Path(folder) / f"{_slug(name)}-{fingerprint}"


def append_line(path: Path, line: str) -> None:
    """Append one line durably: a torn tail left by a crash is cut first, then the line goes
    out in a single write and is fsynced, so a crash can tear at most this line."""
    path = Path(path)
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not created:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            os.truncate(path, data.rfind(b"\n") + 1)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)
