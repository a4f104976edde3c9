"""Files that are whole or absent: every artifact is written under a temporary name in its final
folder and renamed into place (os.replace is atomic on one filesystem), so an export that fails,
fills the disk or is killed never leaves a half file at the final path."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError, ExportError

log = logging.getLogger(__name__)

WORK_PREFIX = ".finch-export-"  # scratch folders (merged model, f16 GGUF) inside the output folder
PART_SUFFIX = ".part"


def human_size(n_bytes: float) -> str:
    """1536 -> '1.5 KB' (decimal units, like the Hub and `ls -h --si`)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n_bytes) < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def disk_full(folder: Path, needed: int | None = None) -> DiskFullError:
    """The error to raise when `folder`'s disk is (or would be) full, with numbers and the fix."""
    free = shutil.disk_usage(folder).free
    need = f"about {human_size(needed)} is needed and " if needed else ""
    return DiskFullError(
        f"No space left on the disk of {folder}: {need}{human_size(free)} is free. Free some space or "
        f"choose another --output_dir; nothing was left at the final path."
    )


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start when the disk clearly cannot hold what the export will write."""
    if shutil.disk_usage(folder).free < needed:
        raise disk_full(folder, needed)


def part_name(final: Path) -> Path:
    """The temporary name an artifact has while it is written: hidden, same folder, our pid in it."""
    return final.with_name(f".{final.name}.{os.getpid()}{PART_SUFFIX}")


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; when the block succeeds, rename it to `final`.

    On any error (a full disk included) the temporary file is removed and `final` is untouched;
    ENOSPC becomes a DiskFullError that says how much space is free.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = part_name(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise ExportError(f"{final.name} was not written: the step that makes it produced no file")
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise disk_full(final.parent) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def work_dir(output_dir: Path) -> Path:
    """A scratch folder on the output's filesystem, so the final renames stay atomic."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=output_dir))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(output_dir: Path) -> int:
    """Delete scratch folders and part files of earlier exports that were killed; return how many."""
    if not output_dir.is_dir():
        return 0
    removed = 0
    for path in output_dir.iterdir():
        if path.name.startswith(WORK_PREFIX):
            pid = path.name[len(WORK_PREFIX) :].split("-")[0]
        elif path.name.startswith(".") and path.name.endswith(PART_SUFFIX):
            pid = path.name[: -len(PART_SUFFIX)].rsplit(".", 1)[-1]
        else:
            continue
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d leftover(s) of an interrupted export in %s", removed, output_dir)
    return removed
