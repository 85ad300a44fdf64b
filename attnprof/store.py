"""Files on disk: the JSON encoding of records, atomic writes, schema versions, the profiles/ layout.

Every output goes through atomic_write_bytes: a regular file is written to a temporary file
in the destination folder, fsynced and renamed over the destination, so a reader never sees
a half-written file even if the writer is killed; a device, a FIFO or a file descriptor
(/dev/null, /dev/stdout) is written into, never replaced. Stores that grow record by record
are JSON Lines files: one fsynced line per record, appended under an fcntl lock, so
concurrent writers interleave whole lines and a killed writer leaves at most a torn last
line, which readers skip and the next writer cuts off.
Nothing is ever unpickled: files are JSON. Older schema versions are upgraded by the steps
registered in MIGRATIONS; newer ones are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import reprlib
import shutil
import stat
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from attnprof.errors import InputFileError, OutputFileError, UsageError

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 1 << 30  # far above any saved record or store; what is longer is read no further
INT64_MAX = 2**63 - 1  # no count or size in a record is larger: one that is, is a corrupt file
R = TypeVar("R")

DEFAULT_PROFILE_DIR = Path("profiles")


def to_json_dict(record: Any) -> Any:
    """A dataclass (or list/dict of them) as plain JSON-ready values."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json_dict(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_json_dict(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_json_dict(v) for k, v in record.items()}
    if isinstance(record, float) and not math.isfinite(record):
        return None  # JSON has no NaN/inf; a non-finite figure is "unknown"
    return record


def record_json(record: Any) -> str:
    """A record as the indented JSON text attnprof prints (no NaN/inf: see to_json_dict)."""
    return json.dumps(to_json_dict(record), indent=1, allow_nan=False)


def timestamp() -> str:
    """Now, in UTC to the second (ISO 8601, e.g. 2026-11-21T09:00:00+00:00): every record's `created`."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def from_json_dict(cls: type[R], data: Any, where: str = "") -> R:
    """Build `cls` from JSON data, naming the offending field when the data does not fit."""
    return typing.cast(R, _build(cls, data, where or cls.__name__))


def _build(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, data, where)
            except InputFileError as exc:
                errors.append(str(exc))
        raise InputFileError(errors[0] if errors else f"{where}: unexpected null")
    if origin is Literal:
        if data not in typing.get_args(tp):
            raise InputFileError(f"{where}: {_short(data)} is not one of {list(typing.get_args(tp))}")
        return data
    if origin in (list, tuple):
        if not isinstance(data, list):
            raise InputFileError(f"{where}: expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: expected an object, got {type(data).__name__}")
        _, value_type = typing.get_args(tp) or (str, Any)
        # A key from the file is shown escaped when it is not printable, so errors stay one line.
        return {k: _build(value_type, v, f"{where}.{k if k.isprintable() else repr(k)}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputFileError(f"{where}: missing field {f.name!r}")
        try:
            return tp(**kwargs)
        except (UsageError, ValueError, TypeError) as exc:
            # A record's own validation (__post_init__) rejecting what the file holds.
            raise InputFileError(f"{where}: {exc}") from None
    if tp is float:
        if data is None:
            return math.nan
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise InputFileError(f"{where}: expected a number, got {_short(data)}")
        try:
            return float(data)
        except OverflowError:
            raise InputFileError(f"{where}: number too large ({_short(data)})") from None
    if tp in (int, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise InputFileError(f"{where}: expected {tp.__name__}, got {_short(data)}")
        if tp is int and not -INT64_MAX <= data <= INT64_MAX:
            raise InputFileError(f"{where}: {_short(data)} is out of range (a 64-bit integer)")
        return data
    raise InputFileError(f"{where}: cannot read a value of type {tp}")


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(cls: type, title: str) -> dict[str, Any]:
    """The JSON Schema of a top-level record file, derived from its dataclasses as `_build`
    reads them: what `to_json_dict` writes validates, and what validates is what loads (a
    number may be null: a non-finite figure is written as null)."""
    definitions: dict[str, Any] = {}
    root = _schema_of(cls, definitions)
    top = definitions[cls.__name__]
    top["properties"].setdefault("schema_version", {"type": "integer", "minimum": 1})
    return {"$schema": JSON_SCHEMA_DIALECT, "title": title, **root, "$defs": dict(sorted(definitions.items()))}


def _schema_of(tp: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(option, definitions) for option in typing.get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return {"type": "array", "items": _schema_of(item, definitions)}
    if origin is dict:
        _, value_type = typing.get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": _schema_of(value_type, definitions)}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in definitions:
            definitions[name] = {}  # a placeholder, so a record that contains itself terminates
            hints = typing.get_type_hints(tp)
            fields = dataclasses.fields(tp)
            definitions[name] = {
                "type": "object",
                "description": " ".join((tp.__doc__ or "").split()),
                "properties": {f.name: _schema_of(hints[f.name], definitions) for f in fields},
                "required": [f.name for f in fields
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING],
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{name}"}
    if tp is float:
        return {"type": ["number", "null"]}
    if tp is int:
        return {"type": "integer", "minimum": -INT64_MAX, "maximum": INT64_MAX}
    if tp in (str, bool):
        return {"type": "string" if tp is str else "boolean"}
    raise TypeError(f"no JSON Schema for a value of type {tp}")


def _short(value: Any) -> str:
    """A value's repr cut short (length and nesting) for a one-line error message."""
    return reprlib.repr(value)



def short_hash(parts: Any) -> str:
    """A stable 12-hex-digit digest of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files 0600; saved files get the mode an ordinary open() would give them.
_FILE_MODE = _default_file_mode()


class _Anchor:
    folder: str | None = None  # the working folder a command started in; None: the process's


def anchored(path: Path) -> Path:
    """`path` as the files here open it: a relative path is taken from the folder the command
    started in, even after the user's code changed the working directory (os.chdir)."""
    path = Path(path)
    if path.is_absolute() or _Anchor.folder is None:
        return path
    return Path(_Anchor.folder) / path


@contextlib.contextmanager
def paths_from_here() -> Iterator[None]:
    """While this runs, relative paths given to this module are taken from the current folder."""
    _Anchor.folder = os.getcwd()
    try:
        yield
    finally:
        _Anchor.folder = None


def file_identity(path: Path) -> tuple[int, int] | str | None:
    """What writing `path` would replace: an existing regular file's (device, inode), or the
    resolved path where a new file would be created; None for what is written into and never
    replaced (a device, a FIFO: see atomic_write_bytes). Equal identities are the same file."""
    real = anchored(path)
    try:
        info = os.stat(real)
    except OSError:
        return os.path.realpath(real)
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`: see atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path`, the one way attnprof writes an output file.

    A regular file (or a new one) is written to a temp file beside it, fsynced and renamed over
    it: all or nothing, the old file kept on failure. A symlink to a regular file keeps the link
    and replaces the file it names. Anything else is written into and never replaced: a
    character device (/dev/null), a FIFO, a terminal; a file descriptor reached through /proc
    (/dev/stdout, /dev/fd/N) is written to as that descriptor, after what is already there. A
    dangling symlink is refused (it would create a file wherever it points), as is a directory.
    """
    path = Path(path)
    with _writing(path):
        destination = _destination(anchored(path))
        if isinstance(destination, int):
            _write_fd(descriptor_stand_ins.get(destination, destination), data)
        elif destination is None:
            fd = os.open(anchored(path), os.O_WRONLY | os.O_APPEND)
            try:
                _write_fd(fd, data)
            finally:
                os.close(fd)
        else:
            _replace(destination, data)


# What a write to /dev/fd/N means while attnprof runs: descriptor N itself, unless the CLI has
# pointed N elsewhere for a while (user code's stdout goes to stderr while a command runs, and
# /dev/stdout then means the real stdout, kept aside under another descriptor).
descriptor_stand_ins: dict[int, int] = {}


def _destination(path: Path) -> Path | int | None:
    """The regular file to replace for `path`; one of this process's descriptors to write to;
    or None when whatever is at `path` is to be opened and written into."""
    try:
        info = os.stat(path)  # follows symlinks: what a write would reach
    except FileNotFoundError:
        if os.path.islink(path):
            raise OutputFileError(
                f"{path}: cannot write (a symlink to {os.readlink(path)}, which does not exist)"
            ) from None
        return path
    if stat.S_ISDIR(info.st_mode):
        raise OutputFileError(f"{path}: cannot write (is a directory)")
    descriptor = _proc_descriptor(path)
    if descriptor is not None:
        return descriptor if descriptor >= 0 else None
    if not stat.S_ISREG(info.st_mode):
        return None
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _proc_descriptor(path: Path) -> int | None:
    """For a path whose symlinks pass through /proc/PID/fd/N: N when PID is this process, -1
    for another process's descriptor; None for a path that does not go through /proc."""
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on nested links
        folder = os.path.realpath(os.path.dirname(hop))
        if folder.startswith("/proc/"):
            own = folder == f"/proc/{os.getpid()}/fd" or folder.startswith(f"/proc/{os.getpid()}/task/")
            name = os.path.basename(hop)
            return int(name) if own and name.isdigit() else -1
        if not os.path.islink(hop):
            return None
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
    return None


def _write_fd(fd: int, data: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):  # what Python holds for a descriptor lands first
        with contextlib.suppress(Exception):
            stream.flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _replace(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` (disk full, no permission) as a one-line OutputFileError."""
    try:
        yield
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write ({exc.strerror or exc})") from exc


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
    """Save a record as JSON with its schema_version, atomically (replacing any older file)."""
    atomic_write_text(Path(path), _record_text(record))


def write_new_record(path: Path, record: Any) -> Path:
    """Save a record under `path`, or `<stem>-1<suffix>`, `-2`... if that name is taken.

    Two processes saving to the same name both keep their file: the temp file is hard-linked
    to its final name, which fails rather than overwrite. Returns the path written.
    """
    path = Path(path)
    text = _record_text(record)
    with _writing(path):
        anchored(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=anchored(path).parent)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            for attempt in range(10_000):
                candidate = path if attempt == 0 else path.with_name(f"{path.stem}-{attempt}{path.suffix}")
                try:
                    _create_from(tmp_name, anchored(candidate))
                except FileExistsError:
                    continue
                _fsync_dir(anchored(path).parent)
                return candidate
            raise OutputFileError(f"{path}: cannot write (10000 files of this name already)")
        finally:
            Path(tmp_name).unlink(missing_ok=True)


def _create_from(tmp_name: str, path: Path) -> None:
    """Give the finished temp file the name `path`, raising FileExistsError if it is taken."""
    try:
        os.link(tmp_name, path)  # fails rather than replace: atomic no-clobber
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A file system without hard links: reserve the name, then rename over the reservation
        # (a reader may glimpse the empty reservation for that moment).
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        try:
            os.replace(tmp_name, path)
        except BaseException:
            Path(path).unlink(missing_ok=True)  # never leave the empty reservation behind
            raise


def _record_text(record: Any) -> str:
    data = to_json_dict(record)
    if isinstance(data, dict):
        data.setdefault("schema_version", SCHEMA_VERSION)
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


# Schema migrations: MIGRATIONS[v] turns the data of a version-v file into version v + 1.
# read_json applies them in order, so a file of any older version is read as the current one.
Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register the step that upgrades data of schema `from_version` to `from_version + 1`."""

    def register(step: Migration) -> Migration:
        if from_version in MIGRATIONS:
            raise ValueError(f"a migration from schema_version {from_version} is already registered")
        MIGRATIONS[from_version] = step
        return step

    return register


def migrate(
    data: dict[str, Any],
    where: str,
    current: int | None = None,
    migrations: dict[int, Migration] | None = None,
) -> dict[str, Any]:
    """Check `data`'s schema_version and upgrade it to `current` (default: SCHEMA_VERSION);
    refuse newer or unknown ones. `migrations` defaults to the MIGRATIONS registry."""
    current = SCHEMA_VERSION if current is None else current
    steps = MIGRATIONS if migrations is None else migrations
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputFileError(f"{where}: corrupt file (no integer schema_version)")
    if version > current:
        raise InputFileError(
            f"{where}: schema_version {version} is newer than this attnprof understands "
            f"({current}); upgrade attnprof"
        )
    if version < 1:
        raise InputFileError(f"{where}: corrupt file (schema_version {version})")
    while version < current:
        step = steps.get(version)
        if step is None:
            raise InputFileError(f"{where}: schema_version {version} is too old to read (no migration)")
        try:
            data = step(dict(data))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputFileError(
                f"{where}: corrupt file (cannot upgrade from schema_version {version}: {exc!r})"
            ) from None
        version += 1
        data["schema_version"] = version
    return data


def read_json(path: Path) -> dict[str, Any]:
    """Load a JSON object written by attnprof, refusing corrupt files and newer schemas."""
    path = Path(path)
    try:
        raw = _read_bounded(anchored(path))
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = _parse_json_object(raw, str(path))
    return migrate(data, str(path))


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refusing more than MAX_FILE_BYTES (a device such as /dev/zero never ends)."""
    with open(path, "rb") as handle:
        too_large = os.fstat(handle.fileno()).st_size > MAX_FILE_BYTES
        raw = b"" if too_large else handle.read(MAX_FILE_BYTES + 1)
    if too_large or len(raw) > MAX_FILE_BYTES:
        raise InputFileError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes: not a file attnprof wrote")
    return raw


def _parse_json_object(raw: bytes, where: str) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity) holding an object; anything else is a corrupt file."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise InputFileError(f"{where}: corrupt file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{where}: corrupt file (invalid JSON at line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        # ValueError: NaN/Infinity, or an integer longer than Python converts; RecursionError:
        # nesting deeper than the parser's stack.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputFileError(f"{where}: corrupt file ({reason})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{where}: corrupt file (expected a JSON object)")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_record(path: Path, cls: type[R]) -> R:
    return from_json_dict(cls, read_json(path), where=str(path))


def slug(text: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return slug.strip("_.")[:60] or "workload"


@dataclass
class JsonLines:
    """What a JSON Lines store holds: its records (upgraded to the current schema) and notes."""

    records: list[dict[str, Any]]
    notes: list[str]  # e.g. a torn last line left by a writer that was killed mid-append


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline, dropping a line whose writer was killed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def read_jsonl(path: Path, inside: Path | None = None) -> JsonLines:
    """Load every complete line of a JSON Lines store; a missing file is an empty store.

    A last line without its newline is a torn append: skipped and reported in `notes`.
    Any other bad line means the file was damaged by something other than attnprof's
    writers, and the whole file is refused as corrupt. A store that must stay `inside` a
    folder is refused when a symlink takes it elsewhere (see append_line).
    """
    path = Path(path)
    try:
        raw = _read_bounded(_confined(path, inside))
    except FileNotFoundError:
        return JsonLines(records=[], notes=[])
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = raw.split(b"\n")
    notes = []
    if lines[-1].strip():
        notes.append(f"{path}: skipped a torn last line ({len(lines[-1])} bytes) from an interrupted write")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        records.append(migrate(_parse_json_object(line, where), where))
    return JsonLines(records=records, notes=notes)


def read_jsonl_records(path: Path, cls: type[R], inside: Path | None = None) -> tuple[list[R], list[str]]:
    """`read_jsonl`, each line built as a `cls` record."""
    store = read_jsonl(path, inside)
    records = [
        from_json_dict(cls, data, where=f"{path}, record {i + 1}") for i, data in enumerate(store.records)
    ]
    return records, store.notes


def append_jsonl(path: Path, record: Any, inside: Path | None = None) -> None:
    """Append one record (with its schema_version) as one line of a JSON Lines store."""
    data = to_json_dict(record)
    if not isinstance(data, dict):
        raise TypeError(f"append_jsonl stores objects, not {type(data).__name__}")
    data.setdefault("schema_version", SCHEMA_VERSION)
    append_line(path, json.dumps(data, allow_nan=False, separators=(",", ":")), inside)


def append_line(path: Path, line: str, inside: Path | None = None) -> None:
    """Append one line to a file durably; done when this returns.

    Writers hold an exclusive fcntl lock on the file while they append, so lines from
    concurrent processes never interleave nor cut each other. A torn last line (a writer
    killed mid-append) is cut off first: it never completed, so nothing completed is lost.
    The line goes out in one write and is fsynced. With `inside`, a path that symlinks lead
    out of that folder is refused (exit 2) before anything is opened, let alone cut.
    """
    path = Path(path)
    encoded = (line.rstrip("\n") + "\n").encode("utf-8")
    if b"\n" in encoded[:-1]:
        raise ValueError("append_line writes a single line; the text holds a newline")
    real = _confined(path, inside)
    with _writing(path):
        real.parent.mkdir(parents=True, exist_ok=True)
        created = not real.exists()
        # No symlink is followed from here: the path was resolved above, and one swapped in
        # since fails to open rather than lead elsewhere.
        fd = os.open(real, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _cut_torn_tail(fd)
            written = 0
            while written < len(encoded):
                written += os.write(fd, encoded[written:])
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock
        if created:
            _fsync_dir(real.parent)


def _confined(path: Path, inside: Path | None) -> Path:
    """`path` as it is opened (anchored); with `inside`, resolved through its symlinks, which
    must not lead out of that folder (InputFileError otherwise)."""
    if inside is None:
        return anchored(path)
    real = Path(os.path.realpath(anchored(path)))
    root = Path(os.path.realpath(anchored(inside)))
    if not real.is_relative_to(root):
        raise InputFileError(
            f"{path}: symlinks lead to {real}, outside {inside}; attnprof does not follow a store out of its folder"
        )
    return real


class ScratchFolder:
    """A temporary folder, attnprof-KIND-<random suffix> in the system's temp folder, removed on cleanup().

    Its owner holds a lock on the folder's .owner file for as long as it lives, so a folder
    left by a process that was killed (SIGKILL, the OOM killer) is recognised, unlocked, and
    removed by the next scratch folder of its kind; a live owner's is never touched, even
    from another PID namespace sharing the temp folder.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        _remove_abandoned(kind)
        self.path = Path(tempfile.mkdtemp(prefix=f"attnprof-{kind}-"))
        self._lock = os.open(self.path / ".owner", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


def _remove_abandoned(kind: str) -> None:
    """Remove the attnprof-KIND-* folders whose owner died without cleaning up."""
    for folder in Path(tempfile.gettempdir()).glob(f"attnprof-{kind}-*"):
        try:
            lock = os.open(folder / ".owner", os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # not one of ours, or being set up right now
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            os.close(lock)
        shutil.rmtree(folder, ignore_errors=True)


def workload_dir(folder: Path, name: str, fingerprint: str) -> Path:
    """profiles/<workload name>-<fingerprint>: where one workload's files live."""
    return Path(folder) / f"{slug(name)}-{fingerprint}"
