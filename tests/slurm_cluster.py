"""A real single-node SLURM cluster on localhost for tests: munged, slurmctld
and slurmd from Debian's slurm-wlm, started by hand (no systemd), accounting
off, stopped by their PIDs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from setup_check import missing_packages

SLURM_CONF_TEMPLATE = """\
ClusterName=btpipe-test
SlurmctldHost={host}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
MaxJobCount=100000
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=btpipe Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

DAEMONS = ("munged", "slurmctld", "slurmd")
# Job steps (srun inside a batch job) look for the config at the default path,
# whatever SLURM_CONF the submitter had, so the test cluster's config goes there
# too, marked so that it is only ever replaced or removed by these tests.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by btpipe's test cluster (tests/slurm_cluster.py)\n"


def missing_tools() -> list[str]:
    """Commands of slurm-wlm, munge and procps that the cluster uses and PATH lacks."""
    return [c for package in missing_packages({"slurm"}) for c in package.commands
            if not shutil.which(c)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` has SLURM_CONF set."""

    def __init__(self, root: Path, cpus: int = 2, mem_mb: int = 16000):
        self.root = Path(root)
        self.cpus, self.mem_mb = cpus, mem_mb
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _munge(self):
        socket_dir = self.root / "munge"
        socket_dir.mkdir(parents=True, exist_ok=True)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
        # The cluster's daemons and clients talk to the default socket.
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["munged", "--force", f"--pid-file={self.root}/run/munged.pid"],
                           check=True)
            _wait(lambda: (self.root / "run/munged.pid").exists(), 20, "munged")
            self.pids["munged"] = int((self.root / "run/munged.pid").read_text())

    def start(self):
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _start(self):
        for sub in ("state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(SLURM_CONF_TEMPLATE.format(
            host=host, user=os.environ.get("USER", "root") if os.getuid() else "root",
            root=self.root, ctld_port=_free_port(), d_port=_free_port(), cpus=self.cpus,
            mem_mb=self.mem_mb))
        self._install_default_conf()
        self._munge()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(self.conf)], check=True, env=self.env)
            pidfile = self.root / "run" / f"{daemon}.pid"
            _wait(pidfile.exists, 30, daemon)
            self.pids[daemon] = int(pidfile.read_text())
        _wait(self._node_idle, 60, "the node to become idle")
        return self

    def _install_default_conf(self):
        if DEFAULT_CONF.exists() and not DEFAULT_CONF.read_text().startswith(MARKER):
            raise RuntimeError(f"{DEFAULT_CONF} belongs to a real cluster; not touching it")
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.write_text(MARKER + self.conf.read_text())
        self.conf = DEFAULT_CONF
        self.env["SLURM_CONF"] = str(DEFAULT_CONF)

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             env=self.env)
        return out.stdout.strip().startswith("idle")

    def jobs_completed(self) -> set[str]:
        """Ids of the jobs that ran here and exited 0 (from the controller's log;
        no accounting). Jobs start through the main or the backfill scheduler,
        but every one ends in the same `_job_complete` line."""
        log = (self.root / "log/slurmctld.log").read_text(errors="replace")
        return set(re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0", log))

    def stop(self):
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            _wait(lambda: not Path(f"/proc/{pid}").exists(), 30, f"{name} to stop")
        if DEFAULT_CONF.exists() and DEFAULT_CONF.read_text().startswith(MARKER):
            DEFAULT_CONF.unlink()
