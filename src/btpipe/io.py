"""Atomic file writing and small readers shared by every stage.

Every artefact goes to a temporary file in the destination folder and is then
renamed into place, so a crash or kill leaves the old file or none, never a
partial one (os.replace is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

TMP_PREFIX = ".tmp-"
# Names the workflow itself leaves in folders it writes: Snakemake's marker in
# every directory() output (and its .snakemake/ folder), btpipe's temporary
# files. They are never input: scans of input folders skip them without a word.
PIPELINE_MARKER_PREFIXES = (".snakemake", TMP_PREFIX)


def is_pipeline_marker(name) -> bool:
    """True for a file or folder name the workflow wrote (PIPELINE_MARKER_PREFIXES)."""
    return Path(name).name.startswith(PIPELINE_MARKER_PREFIXES)


def _default_mode() -> int:
    """The mode a plain open() would give (mkstemp makes files owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it to `path` on success.

    The temporary name keeps the file's suffixes (e.g. ``.nii.gz``) so
    libraries that choose a format from the extension still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive advisory lock on `path` (created if missing) while inside.

    Jobs on one machine wait for each other; where the file system does not
    support flock (some network mounts) the lock is skipped, at the cost of
    duplicated work, never wrong results.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fh, fcntl.LOCK_UN)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_none(obj):
    """JSON has no NaN: write null so every reader (browsers too) can parse it."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    write_text(path, json.dumps(_finite_or_none(obj), indent=2, sort_keys=True,
                                default=_json_default) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_parquet(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_nifti(path, img) -> None:
    """Save a nibabel image atomically."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_array_nifti(path, data, affine, header=None, dtype=None) -> None:
    """Save an array with an affine (and optional template header) atomically."""
    import nibabel as nib

    data = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if dtype is not None:
        img.set_data_dtype(dtype)
    save_nifti(path, img)


def savez_compressed(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def save_figure(path, fig, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the final suffix)."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, **kwargs)


def torch_save(path, obj) -> None:
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def read_label_volume(path, what="label map"):
    """A 3-D integer label NIfTI -> (image, int16 array); a singleton 4th axis
    is dropped. InputError names the file when it is missing, unreadable,
    not 3-D or holds non-integer values."""
    import nibabel as nib

    from .errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path=path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read {what}: {exc}", path=path) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what} must be 3-D, got shape {data.shape}", path=path)
    if data.dtype.kind in "iu":  # integer-stored labels: nothing to round
        return img, data.astype(np.int16)
    rounded = np.rint(data)
    # Float-stored labels written by other tools may carry rounding noise.
    if not np.allclose(rounded, data, atol=1e-3):
        raise InputError(f"{what} holds non-integer values", path=path)
    return img, rounded.astype(np.int16)


def plain_values(value):
    """Tuples -> lists, numpy scalars -> Python, recursively: safe for JSON and for
    torch.load(weights_only=True)."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
