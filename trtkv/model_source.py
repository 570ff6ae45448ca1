"""Models in, any usual way: what a MODEL argument names, and the export cache behind it.

Owns turning a user's model spec into an exported directory: an exported directory (used as
is), a Hugging Face checkpoint directory, a hub id found in the LOCAL Hugging Face cache, or a
``.gguf`` file (dequantized through transformers' GGUF loader). `trtkv generate`, `chat` and
`serve` call `resolve_model` once at start; `trtkv export` calls `export_model`.

On-the-fly exports live under ``$TRTKV_CACHE/<digest>/`` (default
``~/.cache/trtkv/exports/<digest>/``), keyed by the checkpoint's content and the export options
that change the output, and are published by one rename, so concurrent first starts never see
half an export. Never calls the network: hub ids resolve from the local cache only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from trtkv.errors import CheckpointError
from trtkv.export.config import ExportConfig
from trtkv.manifest import FORMAT_VERSION, GRAPH_REVISION, MANIFEST_FILE

if TYPE_CHECKING:
    from trtkv.manifest import Manifest

#: ``ORG/NAME`` as the Hugging Face hub spells repository ids (no leading ``/`` or ``.``).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Non-weight files up to this size enter the cache key by their bytes, larger ones by stat.
_HASH_BYTES_MAX = 64 * 2**20
#: The MODEL argument's help in `trtkv generate`, `chat` and `serve`.
MODEL_HELP = ("exported model directory, Hugging Face checkpoint directory, hub id in the local "
              "HF cache (ORG/NAME) or .gguf file; the latter three are exported once into "
              "$TRTKV_CACHE (~/.cache/trtkv/exports)")


def resolve_model(spec: str | Path, *, dtype: str = "fp32", kv_dtype: str = "auto",
                  block_size: int = 16, progress: bool = True) -> Path:
    """The exported model directory for ``spec``, exporting it into the cache the first time.

    Args:
        spec: an exported directory, an HF checkpoint directory, a cached hub id
            (``ORG/NAME``) or a ``.gguf`` file.
        dtype, kv_dtype, block_size: export options (part of the cache key).
        progress: show the export's progress bar.

    Returns:
        ``spec`` itself when it is an exported directory (or names nothing this module knows,
        so the caller's own "does not exist" error applies), else the cached export.

    Raises:
        CheckpointError: an uncached hub id, or a checkpoint that cannot be exported.
        MissingExtraError: a .gguf file without the 'gguf' extra.
    """
    config = ExportConfig(dtype=dtype, kv_dtype=kv_dtype, block_size=block_size, progress=progress)
    path = Path(spec).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        source, key = path, _gguf_key(path)
    elif path.is_dir() and (path / "config.json").is_file():
        source, key = path, _checkpoint_key(path)
    elif _is_hub_id(spec):
        source = hub_snapshot(str(spec))
        key = _checkpoint_key(source)
    elif path.suffix == ".gguf" and not path.exists():
        raise CheckpointError(f"GGUF file {path} does not exist")
    else:
        return path
    digest = _digest({"key": key, "dtype": config.dtype, "kv_dtype": config.resolved_kv_dtype,
                      "block_size": config.block_size, "format_version": FORMAT_VERSION,
                      "graph": GRAPH_REVISION, "trtkv": _trtkv_version()})
    return _cached_export(spec, source, export_cache_dir() / digest, config)


def export_model(spec: str | Path, out_dir: str | Path, config: ExportConfig) -> Manifest:
    """`trtkv export SPEC -o OUT`: an HF directory, a cached hub id or a .gguf file.

    Returns:
        The manifest written to ``out_dir``.
    """
    from trtkv.export.exporter import export

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _export_gguf(path, Path(out_dir), config)
    if _is_hub_id(spec):
        path = hub_snapshot(str(spec))
    return export(path, out_dir, config)


def model_name(spec: str | Path) -> str:
    """A name for ``spec`` to show users: the hub id, or the path's name without ``.gguf``."""
    path = Path(spec)
    if _is_hub_id(spec):
        return str(spec)
    return path.resolve().stem if path.suffix == ".gguf" else path.resolve().name


def _is_hub_id(spec: str | Path) -> bool:
    """``ORG/NAME`` that names no local path (a local path always wins)."""
    path = Path(spec).expanduser()
    return bool(_HUB_ID.match(str(spec))) and path.suffix != ".gguf" and not path.exists()


def export_cache_dir() -> Path:
    """``$TRTKV_CACHE``, else ``$XDG_CACHE_HOME/trtkv/exports`` (``~/.cache/trtkv/exports``)."""
    if os.environ.get("TRTKV_CACHE"):
        return Path(os.environ["TRTKV_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "trtkv" / "exports"


def hub_cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (its constants are read at import)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of hub repository ``repo_id`` (never the network).

    Raises:
        CheckpointError: the id is not in the local cache (one line saying how to get it).
    """
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(str(snapshot_download(repo_id, cache_dir=cache, local_files_only=True)))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{repo_id} is not a local path, and the Hugging Face hub id {repo_id} is not in the "
            f"local cache {cache}; run `hf download {repo_id}` (or `huggingface-cli download "
            f"{repo_id}`) where the hub is reachable and copy the cache here (HF_HUB_CACHE), or "
            "pass a checkpoint directory, a .gguf file or an exported directory") from exc


def _cached_export(spec: str | Path, source: Path, final: Path, config: ExportConfig) -> Path:
    """``final`` once it holds the export of ``source``: reused, or exported and renamed in."""
    if (final / MANIFEST_FILE).is_file():
        print(f"using cached export {final}", file=sys.stderr, flush=True)
        return final
    from trtkv.atomic_dir import staging_dir

    with _lock(final):
        if (final / MANIFEST_FILE).is_file():  # another process finished it while we waited
            print(f"using cached export {final}", file=sys.stderr, flush=True)
            return final
        if source.suffix == ".gguf":
            _require_gguf_extra()  # before the "exporting" line: a missing extra is one line
        print(f"exporting {spec} -> {final} (once)", file=sys.stderr, flush=True)
        staging = staging_dir(final)
        try:
            if source.suffix == ".gguf":
                _export_gguf(source, staging, config)
            else:
                from trtkv.export.exporter import export

                export(source, staging, config)
            staging.rename(final)
        except OSError:
            if not (final / MANIFEST_FILE).is_file():  # not a lost race: a real failure
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _lock(final: Path) -> Iterator[None]:
    """Hold an exclusive lock for exporting into ``final`` (so a second start waits, then reuses)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the rename alone keeps the cache consistent
        yield
        return
    with open(final.with_name(f".{final.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export_gguf(gguf: Path, out_dir: Path, config: ExportConfig) -> Manifest:
    """Dequantize ``gguf`` into a temporary HF checkpoint beside ``out_dir``, export that."""
    from trtkv.export.exporter import export

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as tmp:
        checkpoint_from_gguf(gguf, Path(tmp))
        manifest = export(tmp, out_dir, config)
    manifest = replace(manifest, source=str(gguf.resolve()))
    manifest.save(out_dir)
    return manifest


def checkpoint_from_gguf(gguf: Path, out_dir: Path) -> None:
    """Write ``gguf`` dequantized to fp32 as an HF safetensors checkpoint into ``out_dir``.

    Raises:
        MissingExtraError: gguf, accelerate or torch is not installed.
        CheckpointError: transformers' GGUF loader cannot read the file.
    """
    _require_gguf_extra()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unreadable/unsupported files
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"transformers cannot load {gguf} ({first}); trtkv reads GGUF "
                              "Llama / Mistral / Qwen2 / Qwen3 models") from exc
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # dequantized: the weights below are plain fp32
    config["architectures"] = [type(model).__name__]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tied = bool(config.get("tie_word_embeddings"))
    weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()
               if not (tied and name == "lm_head.weight")}  # a tied head shares the embedding
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.generation_config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _require_gguf_extra() -> None:
    from trtkv._optional import require

    for module in ("gguf", "accelerate", "torch"):  # transformers' GGUF loader needs all three
        require(module, "gguf", "a .gguf model")


def _checkpoint_key(hf_dir: Path) -> dict[str, object]:
    """What identifies a checkpoint directory's content: weights by name, size and mtime;
    config, tokenizer and the other small files by their bytes."""
    files: dict[str, object] = {}
    for path in sorted(hf_dir.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        st = path.stat()
        if path.suffix == ".safetensors" or st.st_size > _HASH_BYTES_MAX:
            files[path.name] = [st.st_size, st.st_mtime_ns]
        else:
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"kind": "hf", "files": files}


def _gguf_key(gguf: Path) -> dict[str, object]:
    sha = hashlib.sha256()
    with gguf.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**24), b""):
            sha.update(chunk)
    return {"kind": "gguf", "sha256": sha.hexdigest()}


def _digest(key: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _trtkv_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trtkv")
    except PackageNotFoundError:
        return "source"

