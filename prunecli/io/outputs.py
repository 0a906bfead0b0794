"""Output files and folders written safely: never over an input, one writer at a time, no leftovers.

Every output is written under a temporary name in its own folder and renamed into place only
when complete. Temporary names carry the host and PID of their writer
(`.NAME.prunecli-tmp-HOST-PID-XXXXXXXX`), so a later run that writes into the same folder
removes what a killed run left (its PID is gone). An output path is locked for the whole run
(`.NAME.prunecli-lock`, an flock that the kernel drops when its holder dies), so two runs cannot
both write it. And `--force` replaces only what prunecli itself wrote: never an input, never a
folder holding other files, never the current folder.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prunecli.errors import DiskFullError, InputError, OutputBusyError, OutputExistsError, UsageError
from prunecli.io.manifest import read_manifest

TEMP_MARK = ".prunecli-tmp-"
LOCK_SUFFIX = ".prunecli-lock"
UNNAMED_HOLDER_RETRIES = 100  # ~1 s: a lock held by no named writer is only being tested or taken
OUTPUT_FOLDER_FILES = frozenset({"model.safetensors", "masks.safetensors", "manifest.json"})
_LOCK_NAME = re.compile(r"^\..+\.prunecli-lock$")
_TEMP_NAME = re.compile(r"^\..+\.prunecli-tmp-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]{8}$")
_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"


def temp_name(target: Path) -> str:
    """A fresh temporary name for `target`, in its folder, that says which process wrote it."""
    return f".{target.name}{TEMP_MARK}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number we cannot check: keep its files
    return True


def sweep_stale(folder: Path) -> list[Path]:
    """Remove temporaries and locks in `folder` left by dead prunecli processes on this host.

    Returns:
        What was removed. Files of live processes, of other hosts, and anything that is not
        prunecli's are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match and match["host"] == host and not _pid_alive(int(match["pid"])):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        elif _LOCK_NAME.match(entry.name) and _remove_if_unheld(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _remove_if_unheld(lock_path: Path) -> bool:
    """Unlink a lock file that no process holds (its writer died)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        if _same_file(fd, lock_path):
            lock_path.unlink(missing_ok=True)
            return True
        return False
    finally:
        os.close(fd)


def create_temp_file(target: Path) -> tuple[int, Path]:
    """An exclusive new temporary file beside `target` (after sweeping stale ones): (fd, path)."""
    folder = target.absolute().parent
    sweep_stale(folder)
    while True:
        tmp = folder / temp_name(target)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, tmp, folder) from None


def create_temp_dir(target: Path) -> Path:
    """A new temporary folder beside `target` (after sweeping stale ones)."""
    folder = target.absolute().parent
    sweep_stale(folder)
    while True:
        tmp = folder / temp_name(target)
        try:
            tmp.mkdir(mode=0o700)
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, tmp, folder) from None


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it: never a partial file."""
    fd, tmp = create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, needed=len(data)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_error(exc: OSError, path: Path, folder: Path | None = None, needed: int | None = None) -> Exception:
    """The error to raise when writing `path` failed: disk full, not permitted, or plain I/O."""
    where = folder or path.absolute().parent
    if exc.errno in _DISK_FULL:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        size = f"needs {_size(needed)}, " if needed else ""
        space = f"{_size(free)} free" if free is not None else "free space unknown"
        limit = " (or a file-size limit)" if exc.errno == errno.EFBIG else ""
        return DiskFullError(
            f"disk full while writing {path.name} in {where} ({size}{space}){limit}",
            "free some space or write to another disk with -o; nothing was left behind",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write to {where}: {exc.strerror}", "choose a writable output location")
    return InputError(f"cannot write {path.name} in {where}: {exc.strerror}", "check the disk and the path")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold `target`'s lock for the block; refuse (OutputBusyError) if another process holds it.

    The lock is an flock on `.NAME.prunecli-lock` beside the target: the kernel releases it
    when the holder exits, however it exits, and a later run removes the file.
    """
    lock_path = target.absolute().parent / f".{target.name}{LOCK_SUFFIX}"
    if not lock_path.parent.is_dir():
        raise InputError(f"output folder {lock_path.parent} does not exist", "create it first")
    for attempt in itertools.count():
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(exc, lock_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if not holder and attempt < UNNAMED_HOLDER_RETRIES:
                time.sleep(0.01)  # a sweep testing the lock, or a writer not yet named: brief
                continue
            raise OutputBusyError(
                f"{target} is being written by PID {holder or '?'}",
                "wait for that run to finish, or choose another output",
            ) from None
        if _same_file(fd, lock_path):  # not unlinked by its last holder while we waited
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def refuse_overlap(output: Path, inputs: Iterable[Path], *, folder: bool) -> None:
    """Refuse an output that is, or (for a folder) contains, any input, or holds the current folder."""
    out = output.resolve()
    for source in inputs:
        src = source.resolve()
        same = src == out or (src.exists() and out.exists() and os.path.samefile(src, out))
        if same or (folder and out in src.parents):
            what = "is" if same else "contains"
            raise InputError(
                f"output {output} {what} the input {source}: writing it would destroy the input",
                "write to another path (`force` never replaces an input)",
            )
    if folder and (out == Path.cwd().resolve() or out in Path.cwd().resolve().parents):
        raise InputError(
            f"output {output} is the current folder or holds it", "name a new folder, e.g. -o pruned/"
        )


def require_suffix(path: Path, suffix: str, what: str) -> None:
    """Refuse an output name that other commands (and tools) would not recognise."""
    if not path.name.endswith(suffix) or path.name == suffix:
        raise UsageError(
            f"output {path} does not end in {suffix}", f"name the {what} like {path.stem or 'out'}{suffix}"
        )


def guard_output_file(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an existing output file unless --force, an input, a folder, or a missing parent."""
    refuse_overlap(path, inputs, folder=False)
    if path.is_dir():
        raise InputError(f"output {path} is a directory", "name a file")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputExistsError(f"{path} already exists", "pass `force` to overwrite it")
    if not path.absolute().parent.is_dir():
        raise InputError(f"output folder {path.absolute().parent} does not exist", "create it first")


def check_output_folder(path: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse a folder that holds an input, a non-empty one without --force, or one with foreign files.

    With --force, only a folder holding nothing but prunecli's own outputs is replaced.
    """
    refuse_overlap(path, inputs, folder=True)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"output {path} exists and is not a folder", "name a folder for -o")
    if not path.absolute().parent.is_dir():
        raise InputError(f"output folder's parent {path.absolute().parent} does not exist", "create it first")
    if not path.is_dir():
        return
    entries = sorted(entry.name for entry in os.scandir(path))
    if entries and not force:
        raise OutputExistsError(f"output folder {path} is not empty", "pass `force` to replace it")
    foreign = [name for name in entries if name not in OUTPUT_FOLDER_FILES | _listed_outputs(path)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(
            f"output folder {path} holds files prunecli did not write ({shown}); `force` replaces only "
            "a previous prunecli output",
            "choose another folder, or move those files away first",
        )


def _listed_outputs(folder: Path) -> frozenset[str]:
    """The files a previous output's manifest says prunecli wrote there (shards, copied config)."""
    try:
        files = read_manifest(folder / "manifest.json")["files"]
    except (InputError, OSError):
        return frozenset()
    names = [files.get("model"), *files.get("shards", []), *files.get("copied", [])]
    return frozenset(n for n in names if isinstance(n, str) and "/" not in n and n not in (".", ".."))


@contextmanager
def output_folder(path: Path, force: bool, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """A temporary sibling folder that replaces `path` only if the block succeeds.

    The output is locked for the whole block, checked with `check_output_folder`, and nothing
    is left behind on error.
    """
    inputs = list(inputs)
    with output_lock(path):
        check_output_folder(path, force, inputs)
        tmp = create_temp_dir(path)
        try:
            yield tmp
            tmp.chmod(0o755)
            check_output_folder(path, force, inputs)  # again: the folder may have changed meanwhile
            _publish(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _publish(tmp: Path, path: Path) -> None:
    """Move the finished folder into place; a previous output is moved aside, then removed."""
    if not path.exists():
        tmp.replace(path)
        return
    old = create_temp_dir(path)
    path.replace(old / "previous")
    try:
        tmp.replace(path)
    except BaseException:
        (old / "previous").replace(path)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)  # if killed first, a later run sweeps it (dead PID)


@contextmanager
def output_file(path: Path, force: bool, inputs: Iterable[Path] = ()) -> Iterator[None]:
    """Hold `path`'s lock and check it (`guard_output_file`) while the block writes it atomically."""
    inputs = list(inputs)
    with output_lock(path):
        guard_output_file(path, force, inputs)
        yield


def existing_inputs(*candidates: object) -> list[Path]:
    """The input files named on a command line, for the overlap checks.

    An architecture spec like `file.py:factory` counts as its file; names that are not
    files (zoo models, `random:SHAPE`) are skipped.
    """
    found: list[Path] = []
    for value in candidates:
        if value is None:
            continue
        text = str(value)
        for path in (Path(text), Path(text.rsplit(":", 1)[0])):
            if path.exists():
                found.append(path)
                break
    return found
