"""dcm2niix as a background process in a private temporary folder.

Standard library only: `btpipe convert` starts dcm2niix before it imports
numpy, pandas, nibabel and pydicom, so the converter works on one core while
the interpreter loads those on the other.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def dcm2niix_binary() -> str:
    """Path of the dcm2niix executable from the PyPI package (or PATH)."""
    try:
        import dcm2niix

        path = Path(dcm2niix.bin)
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("dcm2niix")
    if found is None:
        raise RuntimeError("dcm2niix not found: install the PyPI package 'dcm2niix'")
    return found


def dcm2niix_command(dicom_dir, out_dir) -> list[str]:
    """The exact dcm2niix call: -g i ignores a user's ~/.dcm2nii.ini so every
    machine converts alike; -x n no cropping; -ba y anonymised sidecar; -z n
    no gzip here, since btpipe rewrites every file anyway (header text blanked)
    and compresses it once; -f %j_%s names files by series UID + number (only inside the temp
    folder: final names carry the series number alone); -d 9 any nesting."""
    return [dcm2niix_binary(), "-g", "i", "-b", "y", "-ba", "y", "-z", "n", "-x", "n",
            "-d", "9", "-w", "2", "-f", "%j_%s", "-o", str(out_dir), str(dicom_dir)]


class Dcm2niixRun:
    """dcm2niix converting `dicom_dir` into a fresh hidden folder under `out_dir`.

    Use as a context manager: leaving it kills a still-running dcm2niix and
    removes the folder. Its output goes to a log file, so a chatty run can
    never block on a full pipe.
    """

    def __init__(self, dicom_dir, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix=".dcm2niix-", dir=out_dir)
        self.folder = Path(self._tmp.name)
        self._log = open(self.folder / ".dcm2niix.log", "w+", errors="replace")
        self._proc = subprocess.Popen(dcm2niix_command(dicom_dir, self.folder),
                                      stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> tuple[int, list[str]]:
        """Exit code and output lines, once dcm2niix has finished."""
        code = self._proc.wait()
        self._log.seek(0)
        return code, self._log.read().splitlines()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
