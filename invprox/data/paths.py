"""Where the shared evaluation data lives, and one entry point that turns a name into a data set.

The research data sets (``celeba64``, ``BSD68``, ``Set12``, ``Train400``; see
``shared/data/MANIFEST.md``) are never copied into the project. Where they are comes from the caller: a
folder path given as the data spec, the environment variable ``INVPROX_DATA``, or the working directory
(``../shared/data`` or ``shared/data`` below it, the layout of the project's machines). Nothing depends on
where the ``invprox`` package itself is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

from torch.utils.data import Dataset

__all__ = ["DATA_ENV", "shared_data_dir", "dataset_path", "make_dataset"]

DATA_ENV = "INVPROX_DATA"


def _candidates() -> List[Path]:
    cwd = Path.cwd()
    return [(cwd / ".." / "shared" / "data").resolve(), (cwd / "shared" / "data").resolve()]


def shared_data_dir() -> Path:
    """The shared data folder.

    Looked up in this order: ``$INVPROX_DATA`` (if set, it must exist); ``../shared/data`` and
    ``shared/data`` relative to the current working directory.

    Raises:
        FileNotFoundError: ``$INVPROX_DATA`` names a missing folder, or no candidate exists (the
            message lists the places tried).
    """
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"${DATA_ENV} is set to {env!r}, which is not a folder")
        return p.resolve()
    cands = _candidates()
    for c in cands:
        if c.is_dir():
            return c
    tried = "\n".join(f"  {c}" for c in cands)
    raise FileNotFoundError(
        f"shared data folder not found; tried:\n{tried}\nset ${DATA_ENV} to the folder that holds "
        "celeba64/, BSD68/, ..."
    )


def dataset_path(name: str) -> Path:
    """The folder of a shared data set, e.g. ``"celeba64/train"``, ``"BSD68"``.

    Raises:
        ValueError: ``name`` is absolute or leaves the data folder (``..``).
        FileNotFoundError: the data folder or the data set is missing (the message names both).
    """
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(
            f"data set name must be a relative path inside the data folder, got {name!r}"
        )
    root = shared_data_dir()
    p = root / rel
    if not p.is_dir():
        have = sorted(q.name for q in root.iterdir() if q.is_dir())
        raise FileNotFoundError(f"data set {name!r} not found: {p} is missing (available: {have})")
    return p


def make_dataset(
    spec: str,
    size: int = 64,
    channels: int = 3,
    split: str = "train",
    **kwargs: Any,
) -> Dataset:
    """Build a data set from a short spec.

    Args:
        spec: ``"embedded"`` (:class:`~invprox.data.EmbeddedPatches`, the offline default), a folder
            path, or the name of a shared data set (``"celeba64"``, ``"BSD68"``, ``"celeba64/val"``,
            ...). For a folder or a name, the subfolder ``split`` is used when it exists
            (``celeba64/train``), otherwise the folder itself (``BSD68`` has no split).
        size: image or crop side.
        channels: 1 or 3.
        split: "train" or "val".
        **kwargs: passed to :class:`~invprox.data.EmbeddedPatches` or
            :class:`~invprox.data.ImageFolder` (e.g. ``n``, ``seed``, ``cache``, ``resize``,
            ``recursive``).

    Returns:
        A data set of float tensors ``(channels, size, size)`` in ``[0, 1]``.

    Raises:
        FileNotFoundError: ``spec`` is neither an existing folder nor a shared data set.
        ValueError: bad arguments, or the folder holds no images.
    """
    from .embedded import EmbeddedPatches
    from .folder import ImageFolder

    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a string or path, got {type(spec).__name__}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if str(spec) == "embedded":
        return EmbeddedPatches(size=size, channels=channels, split=split, **kwargs)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        try:
            folder = dataset_path(str(spec))
        except (FileNotFoundError, ValueError) as err:
            raise FileNotFoundError(
                f"data spec {str(spec)!r} is not 'embedded', an existing folder, or a shared "
                f"data set ({err})"
            ) from err
    if (folder / split).is_dir():
        folder = folder / split
    return ImageFolder(folder, size=size, channels=channels, **kwargs)
