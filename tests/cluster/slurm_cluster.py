"""A single-node Slurm cluster on this machine, for the executor tests (and `.ci/run`).

Debian's ``slurmctld``, ``slurmd`` and ``munge`` packages run as root in a few seconds:
munged as user ``munge``, then slurmctld and slurmd with a minimal ``slurm.conf`` naming this
host with its real CPU count and memory (``slurmd -C``), process tracking by ``/proc``
(``proctrack/linuxproc``, ``task/none``: no cgroups needed), no accounting storage, and
state, spool, logs and pid files in one temporary folder. :func:`start` returns a
:class:`Cluster` whose ``env`` points Slurm's commands at that config (``SLURM_CONF``);
:meth:`Cluster.stop` stops exactly the daemons :func:`start` started.

Run as a script: ``python tests/cluster/slurm_cluster.py install`` installs the packages with
apt-get when they are missing (as root), ``... check`` starts a cluster, runs one job and stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol", "scancel")


class Unavailable(Exception):
    """Slurm cannot be installed or started here (not root, no apt-get); the message says why (tests skip)."""


class StartFailed(Exception):
    """Slurm is installed but its daemons did not come up; the message holds their logs (tests fail)."""


@dataclass
class Cluster:
    """A running single-node cluster: its folder, config and the processes this module started."""

    root: Path
    conf: Path
    partition: str = "debug"
    started: list[subprocess.Popen] = field(default_factory=list)
    munge_pid: int | None = None  # a munged this module started (it daemonises itself)

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm commands (and for jobs, which inherit it): ``SLURM_CONF`` set."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def logs(self) -> str:
        """The tails of the daemons' logs, for a failing test's message."""
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                out.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the daemons :func:`start` started (and only those), then remove the folder."""
        subprocess.run(["scancel", "--full", "--quiet", "-u", "root"], env=self.env, capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.munge_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.munge_pid, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


def missing() -> list[str]:
    """The Slurm and munge programs not found on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin"
    return [name for name in DAEMONS if shutil.which(name, path=path) is None]


def install() -> None:
    """Install Debian's Slurm and munge packages with apt-get when they are missing (root only)."""
    if not missing():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(f"Slurm is not installed ({', '.join(missing())} missing) and cannot be installed "
                          "here (needs root and apt-get)")  # fmt: skip
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                    *PACKAGES]):  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise Unavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
    if missing():
        raise Unavailable(f"after installing {' '.join(PACKAGES)}, still missing: {', '.join(missing())}")


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin") or name


def _munge_works() -> bool:
    if shutil.which("munge") is None:
        return False
    enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=False)
    if enc.returncode != 0:
        return False
    dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10, check=False)
    return dec.returncode == 0


def _start_munge() -> int | None:
    """Start munged as user munge unless one already answers; return its pid when this call started it."""
    if _munge_works():
        return None
    for folder, mode in (("/run/munge", 0o755), ("/var/log/munge", 0o700), ("/var/lib/munge", 0o711)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
        os.chmod(folder, mode)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run([_sbin("mungekey"), "--create"], check=True, capture_output=True, timeout=30)
        shutil.chown(key, "munge", "munge")
    runuser = shutil.which("runuser") or shutil.which("su")
    cmd = [runuser, "-u", "munge", "--", _sbin("munged")] if runuser.endswith("runuser") else \
        [runuser, "-s", "/bin/sh", "munge", "-c", _sbin("munged")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise StartFailed(f"munged did not start: {done.stderr.strip()}")
    for _ in range(50):
        if _munge_works():
            pid_file = Path("/run/munge/munged.pid")
            return int(pid_file.read_text()) if pid_file.exists() else None
        time.sleep(0.1)
    raise StartFailed("munged started but does not answer on /run/munge")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """``NodeName=... CPUs=... RealMemory=...`` as ``slurmd -C`` reports this host."""
    done = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=30, check=False)
    line = done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else ""
    if not line.startswith("NodeName="):
        raise StartFailed(f"`slurmd -C` did not describe this host: {done.stderr.strip() or done.stdout}")
    return line


def write_conf(root: Path) -> Path:
    node = _node_line()
    host = node.split()[0].split("=", 1)[1]
    port = _free_port()
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=benchtest
SlurmctldHost={host}
SlurmctldPort={port}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
MessageTimeout=20
SlurmdTimeout=300
InactiveLimit=0
{' '.join(w for w in node.split() if not w.startswith('UpTime'))} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def start(timeout: float = 60.0) -> Cluster:
    """Start munged (unless running), slurmctld and slurmd on a fresh config; wait until the node is idle."""
    if missing():
        raise Unavailable(f"Slurm is not installed ({', '.join(missing())} missing)")
    if os.geteuid() != 0:
        raise Unavailable("starting slurmctld/slurmd here needs root")
    root = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    os.chmod(root, 0o755)
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    cluster = Cluster(root, write_conf(root))
    try:
        cluster.munge_pid = _start_munge()
        env = cluster.env
        for daemon in ("slurmctld", "slurmd"):
            args = [_sbin(daemon), "-D", "-f", str(cluster.conf)] + (["-i"] if daemon == "slurmctld" else [])
            log = (root / f"{daemon}.out").open("w")
            cluster.started.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
            if daemon == "slurmctld":
                _wait(lambda: _ok(["scontrol", "ping"], env, "UP"), timeout, "slurmctld did not answer", cluster)
        _wait(lambda: _ok(["sinfo", "-h", "-o", "%t"], env, "idle"), timeout, "the node did not become idle",
              cluster)  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _ok(cmd: list[str], env: dict[str, str], expect: str) -> bool:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode == 0 and expect in done.stdout


def _wait(test, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in cluster.started:
            if proc.poll() is not None:
                raise StartFailed(f"{proc.args[0]} exited with {proc.returncode}\n{cluster.logs()}")
        if test():
            return
        time.sleep(0.2)
    raise StartFailed(f"{what} within {timeout:.0f} s\n{cluster.logs()}")


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        install()
    elif sys.argv[1:] == ["check"]:
        t0 = time.monotonic()
        c = start()
        print(f"cluster up in {time.monotonic() - t0:.1f} s: {c.conf}")
        try:
            out = subprocess.run(["srun", "-N1", "hostname"], env=c.env, capture_output=True, text=True, timeout=60)
            print(out.stdout, out.stderr)
        finally:
            c.stop()
    else:
        sys.exit("usage: slurm_cluster.py install|check")
