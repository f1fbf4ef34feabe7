"""Crash-safe checkpoints and random-state capture for exact resume.

File format: the line ``INVPROX-CKPT``, one JSON header line
``{"format": 1, "size": N, "sha256": H}``, then ``N`` bytes written by :func:`torch.save`.
:func:`load_checkpoint` checks size and SHA-256 before unpickling, so a truncated or corrupted file
is refused with :class:`CheckpointError` instead of loading garbage. Files without the header
(written by plain ``torch.save``) are loaded as they are, unchecked.

:func:`save_checkpoint` writes a temporary file in the same folder, flushes and fsyncs it, and moves
it over the target with :func:`os.replace`, so the target is always either the old or the new
complete file. The previous good file is kept as ``<path>.prev``; :func:`load_latest` falls back to
it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "verify_checkpoint",
    "previous_path",
    "rng_state",
    "set_rng_state",
]

PathLike = Union[str, os.PathLike]
_MAGIC = b"INVPROX-CKPT\n"
_FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or otherwise unusable."""


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the previous checkpoint: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_verified(path: Path, keep_payload: bool) -> Union[bytes, None]:
    """Check header, size and checksum; return the payload (or ``None`` for a plain torch file)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        if f.read(len(_MAGIC)) != _MAGIC:
            return None
        line = f.readline(4096)
        try:
            header = json.loads(line.decode("utf-8"))
            size, digest = int(header["size"]), str(header["sha256"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint {path} has a damaged header: {err}") from err
        if header.get("format") != _FORMAT:
            raise CheckpointError(f"checkpoint {path} has unknown format {header.get('format')!r}")
        h = hashlib.sha256()
        buf = io.BytesIO() if keep_payload else None
        n = 0
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
            if buf is not None:
                buf.write(chunk)
    if n != size:
        what = "truncated" if n < size else "longer than recorded"
        raise CheckpointError(
            f"checkpoint {path} is {what}: {n} bytes of payload, header says {size}"
        )
    if h.hexdigest() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: SHA-256 of the payload does not match"
        )
    return buf.getvalue() if buf is not None else b""


def verify_checkpoint(path: PathLike) -> None:
    """Check a checkpoint's size and checksum without unpickling it.

    Raises:
        FileNotFoundError: the file is missing.
        CheckpointError: truncated, corrupt, or not an invprox checkpoint.
    """
    path = Path(path)
    if _read_verified(path, keep_payload=False) is None:
        raise CheckpointError(
            f"{path} is not an invprox checkpoint (no {_MAGIC.strip().decode()} header)"
        )


def save_checkpoint(path: PathLike, state: Dict[str, Any], keep_previous: bool = True) -> Path:
    """Write ``state`` atomically, with a checksum.

    Args:
        path: target file; its folder is created if needed.
        state: a dict of tensors, state dicts and plain Python values (what ``torch.save`` accepts;
            keep to tensors and builtins so that :func:`load_checkpoint` works with
            ``weights_only=True``).
        keep_previous: move the current file, if it verifies, to ``<path>.prev`` first. A current
            file that fails verification is left out of the rotation (the older ``.prev`` stays)
            with a warning.

    Returns:
        The path written.

    Raises:
        TypeError: ``state`` is not a dict.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = {
        "format": _FORMAT,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(json.dumps(header).encode("utf-8") + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            _rotate(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _rotate(path: Path) -> None:
    """Keep the current file as ``.prev`` if it verifies; the current path never disappears."""
    try:
        verify_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as err:
        warnings.warn(
            f"not keeping {path} as previous checkpoint: {err}", RuntimeWarning, stacklevel=3
        )
        return
    prev = previous_path(path)
    link = prev.with_name(prev.name + ".tmp")
    try:
        if link.exists():
            link.unlink()
        os.link(
            path, link
        )  # hard link: the current file stays in place until the new one replaces it
        os.replace(link, prev)
    except OSError:  # no hard links on this file system: a plain rename (path briefly absent)
        os.replace(path, prev)


def load_checkpoint(
    path: PathLike, map_location: Any = "cpu", weights_only: bool = True
) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` after checking size and checksum.

    Args:
        path: the file.
        map_location: as for :func:`torch.load`.
        weights_only: as for :func:`torch.load`; ``True`` unpickles only tensors and builtins. Pass
            ``False`` only for files you trust.

    Returns:
        The saved state.

    Raises:
        FileNotFoundError: the file is missing.
        CheckpointError: the file is truncated, corrupt, or cannot be unpickled.
    """
    path = Path(path)
    payload = _read_verified(path, keep_payload=True)
    source = io.BytesIO(payload) if payload is not None else path
    try:
        return torch.load(source, map_location=map_location, weights_only=weights_only)
    except Exception as err:
        kind = "checksum verified" if payload is not None else "plain torch file, unchecked"
        raise CheckpointError(
            f"cannot load checkpoint {path} ({kind}): {type(err).__name__}: {err}"
        ) from err


def load_latest(
    path: PathLike, map_location: Any = "cpu", weights_only: bool = True, return_path: bool = False
) -> Union[Dict[str, Any], Tuple[Dict[str, Any], Path]]:
    """Load ``path``, or ``<path>.prev`` when ``path`` is missing or unusable (with a warning).

    Returns:
        The state, or ``(state, path_used)`` when ``return_path``.

    Raises:
        FileNotFoundError: neither file exists.
        CheckpointError: no candidate loads; the message gives each file's reason.
    """
    path = Path(path)
    errors: List[str] = []
    found = False
    for cand in (path, previous_path(path)):
        if not cand.exists():
            errors.append(f"  {cand}: missing")
            continue
        found = True
        try:
            state = load_checkpoint(cand, map_location=map_location, weights_only=weights_only)
        except CheckpointError as err:
            errors.append(f"  {cand}: {err}")
            continue
        if cand != path:
            why = "; ".join(e.strip() for e in errors)
            warnings.warn(f"using previous checkpoint {cand} ({why})", RuntimeWarning, stacklevel=2)
        return (state, cand) if return_path else state
    lines = "\n".join(errors)
    if not found:
        raise FileNotFoundError(f"no checkpoint at {path} nor its previous copy:\n{lines}")
    raise CheckpointError(f"no usable checkpoint at {path}:\n{lines}")


def rng_state() -> Dict[str, Any]:
    """The state of every random generator a training run uses, as tensors and builtins.

    Returns:
        ``{"python", "numpy", "torch"}`` and ``"cuda"`` (one state per device) when CUDA is
        available. Safe to store with :func:`save_checkpoint` and to load with
        ``weights_only=True``.
    """
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore generators captured by :func:`rng_state` (keys that are absent are left alone).

    Raises:
        TypeError: ``state`` is not a dict.
    """
    if not isinstance(state, dict):
        raise TypeError(f"rng state must be a dict, got {type(state).__name__}")
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        key = torch.as_tensor(s["key"]).numpy().astype(np.uint32)
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": key, "pos": int(s["pos"])},
                "has_gauss": int(s["has_gauss"]),
                "gauss": float(s["gauss"]),
            }
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda) != torch.cuda.device_count():
            warnings.warn(
                f"rng state has {len(cuda)} CUDA generators, this machine has "
                f"{torch.cuda.device_count()}; restoring the common ones",
                RuntimeWarning,
                stacklevel=2,
            )
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device=i)
