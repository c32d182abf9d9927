"""Linear registration with picsl-greedy, the registration tool of the BraTS
pipeline (CaPTk), written out as ITK .mat files like the ANTs backend's.

Greedy reads and writes its matrices in RAS physical space, mapping fixed
points to moving points; ITK/ANTs use LPS. Images go through NIfTI files in
a temporary folder: greedy's in-memory interface wants SimpleITK images, and
the copy costs a fraction of a second.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .register import swap_ras_lps, write_itk_matrix

INITIALISATIONS = {"centers": "-ia-image-centers", "identity": "-ia-identity"}


def greedy_linear(fixed, moving, out_mat, *, dof=6, metric="NMI", initial="centers",
                  iterations=(100, 50, 10), threads=1, seed=0) -> Path:
    """Register ANTs image ``moving`` to ``fixed`` with greedy (``dof`` 6: rigid,
    12: affine) and write the ITK .mat (LPS, fixed -> moving) to ``out_mat``.

    ``initial``: 'centers' (image centres aligned: moving to an atlas) or
    'identity' (images already in one world space). ``iterations``: per
    level, coarsest first; greedy halves the fixed image's resolution per
    level (100x50x10 on a 2 mm atlas: 8, 4 and 2 mm). ``seed`` fixes the
    jitter greedy adds to its sample points (greedy's own seed 0 means "from
    the clock", so it gets seed + 1); with one thread, reruns are identical.
    """
    import tempfile

    import ants
    from picsl_greedy import Greedy3D

    for name, image in (("fixed", fixed), ("moving", moving)):
        if not np.ptp(image.numpy()) > 0:
            # Greedy "registers" a constant image without complaint.
            raise ValueError(f"greedy registration: the {name} image is constant")
    # Greedy splits its command line on spaces: work in the system's temporary
    # folder, never under a results path that may hold one.
    with tempfile.TemporaryDirectory(prefix="btpipe-greedy-") as tmp:
        work = Path(tmp)
        ants.image_write(fixed, str(work / "fixed.nii.gz"))
        ants.image_write(moving, str(work / "moving.nii.gz"))
        command = (f"-d 3 -a -dof {int(dof)} -m {metric} "
                   f"-i {work / 'fixed.nii.gz'} {work / 'moving.nii.gz'} -o {work / 'ras.mat'} "
                   f"{INITIALISATIONS[initial]} -n {'x'.join(str(int(n)) for n in iterations)} "
                   f"-threads {int(threads)} -seed {int(seed) + 1} -V 0")
        try:
            with _stdout_to(work / "greedy.log"):
                Greedy3D().execute(command)
            matrix_ras = np.loadtxt(work / "ras.mat")
            if matrix_ras.shape != (4, 4) or not np.isfinite(matrix_ras).all():
                raise ValueError("no finite 4x4 matrix came out (empty or constant image?)")
        except Exception as exc:  # noqa: BLE001 - add greedy's own output to any failure
            tail = (work / "greedy.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"greedy registration failed: {exc}\n{tail}") from exc
    write_itk_matrix(swap_ras_lps(matrix_ras), out_mat)
    return Path(out_mat)


@contextmanager
def _stdout_to(log_path):
    """Send the process's C-level stdout to ``log_path`` for a while: greedy's
    optimiser prints every level's parameters even at ``-V 0``, which would
    fill every job log."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
