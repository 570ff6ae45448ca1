"""Output directories written atomically: staged beside the target, renamed in at the end.

Owns the rules every command that writes a directory (`trtkv export`, `trtkv build`) follows:
the path must be able to be a directory, nothing is written inside a source it must not
touch, a failure leaves nothing behind, and an existing directory is replaced only once the
new one is complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from trtkv.errors import ConfigError


def check_output_dir(out_dir: Path, *, source: Path | None = None, what: str = "the input") -> None:
    """Refuse an output path that is a file, lies under a file, or is (inside) ``source``.

    Raises:
        ConfigError: one line saying which.
    """
    out = out_dir.resolve()
    if source is not None:
        src = source.resolve()
        if out == src or src in out.parents:
            raise ConfigError(f"-o {out_dir} is inside {what} {source}, which is never written to; "
                              "choose another directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o {out_dir} is a file; give a directory path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"-o {out_dir} lies under the file {parent}; give a directory path")
            break


def staging_dir(out_dir: Path) -> Path:
    """A fresh sibling directory to write into (mode 755).

    Raises:
        ConfigError: the parent cannot be written.
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        staging.chmod(0o755)
    except OSError as exc:
        raise ConfigError(f"cannot write to {out_dir.parent} ({exc.strerror or exc}); choose a writable -o") from exc
    return staging


def publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished ``staging`` in as ``out_dir`` (replacing an existing one now, not before)."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)
