"""Writing files atomically: a temp file beside the target, fsync, then rename."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_file(target: str | os.PathLike) -> Path:
    """``target`` as a Path, or the one-line error when it names a folder (checked before any
    long work, so that a wrong output path fails at once)."""
    from .errors import InceptionError

    target = Path(target)
    if target.is_dir():
        raise InceptionError(f"{target}: is a folder; give a file name")
    nearest_folder_above(target)
    return target


def nearest_folder_above(path: Path, name: str | None = None) -> Path | None:
    """The nearest existing path above ``path`` (None: none exists), or the one-line error,
    starting with ``name`` (default: the path), when it is not a folder."""
    from .errors import InceptionError

    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise InceptionError(f"{name or path}: {above} is not a folder")
    return above


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``target`` in one rename.

    An interrupted or failed write leaves ``target`` as it was (or absent) and no temp file behind.
    An OSError of the write (permission denied, read-only or full disk) is raised as an
    :class:`~inceptionctl.errors.OutputError` naming ``target``: one line at the command line.
    """
    from .errors import OutputError

    target = check_output_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(target, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 is not what users expect
            os.replace(tmp_path, target)
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(target, exc) from None
        except RuntimeError as exc:  # torch.save's writer reports a failed write this way
            if not _a_failed_write(exc):
                raise
            raise OutputError(target, _why_a_write_failed(tmp_path, exc)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _a_failed_write(exc: RuntimeError) -> bool:
    """Whether ``exc`` is torch's zip writer failing to write (a full disk, say)."""
    text = str(exc)
    return any(m in text for m in ("PytorchStreamWriter", "inline_container", "file write failed",
                                   "unexpected pos"))


def _why_a_write_failed(path: Path, exc: RuntimeError) -> OSError:
    """The OSError behind torch's failed write: a full disk where little space is left."""
    import errno

    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < (64 << 20):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        pass
    return OSError(errno.EIO, f"the write failed: {str(exc).splitlines()[0][:120]}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def strict_json(value: object) -> object:
    """``value`` with every float that is not finite (NaN, +-inf) replaced by None, so that
    ``json.dumps`` writes ``null`` instead of ``NaN`` / ``Infinity``, which are not JSON (a
    script's strict parser rejects them; a diverged model's logits bring them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


#: First bytes of files a user may give by mistake, and what they are.
SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
              (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"RIFF", "a RIFF (WebP) file"),
              (b"\x1f\x8b", "a gzip file"), (b"\x93NUMPY", "a NumPy array"),
              (b"PK\x03\x04", "a zip archive (as torch.save writes)"))


def known_kind(head: bytes) -> str | None:
    """What a file whose first bytes are ``head`` is (``"a JPEG image"``), where they say."""
    return next((what for magic, what in SIGNATURES if head.startswith(magic)), None)
