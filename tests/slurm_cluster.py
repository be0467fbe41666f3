"""A private single-node SLURM on localhost (munged, slurmctld, slurmd) for tests and by hand.

Every instance lives in its own folder: slurm.conf, state, spool, logs and its own munged socket
and key, with free ports, so two test sessions (or a system SLURM already running here) never
share a daemon. Clients find it through `SLURM_CONF`, which `env` holds. Root and no systemd:
the daemons are started in the foreground as our children and stopped by their pids (and on
Linux they die with us: a test run killed with SIGKILL leaves no daemon behind).

    python tests/slurm_cluster.py   # start one, print its SLURM_CONF, stop it on Enter
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "squeue")
INSTALL_LOCK = Path(tempfile.gettempdir()) / "genlab-slurm-install.lock"


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _die_with_parent() -> None:
    """Run in the daemon's process before exec: SIGTERM it when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "prctl"):
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Unavailable(Exception):
    """SLURM cannot be installed or started here; the message says why."""


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None]


def ensure_installed() -> None:
    """Install Debian's slurm-wlm and munge when absent (root and apt-get needed).

    A lock file keeps two test sessions from running apt-get at once.
    """
    if not missing_programs():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            f"SLURM is not installed ({', '.join(missing_programs())} missing) "
            "and installing it needs root and apt-get"
        )
    with INSTALL_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not missing_programs():
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["?"])[-1]
                raise Unavailable(f"{' '.join(command)} failed: {last}")
    if missing_programs():
        raise Unavailable(f"still missing after apt-get: {', '.join(missing_programs())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class LocalSlurm:
    """One node named after this host with `cpus` CPU slots and, optionally, `gpus` fake GPU
    slots (generic resources without devices: enough for scheduling, nothing runs on them)."""

    def __init__(self, cpus: int = 4, gpus: int = 0):
        self.cpus, self.gpus = cpus, gpus
        # A short path: munged's socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="genlab-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        root = self.root
        for folder in ("state", "spool"):
            (root / folder).mkdir()
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        memory = max(1024, memory_mb() - 512)
        lines = [
            f"ClusterName=genlab{os.getpid()}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again.
            f"AuthInfo=socket={root / 'munge.socket'},cred_expire=10",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "DefMemPerCPU=512",
            "ReturnToService=2",
            # The node may declare more CPU slots than the machine has (array tasks side by side).
            "SlurmdParameters=config_overrides",
            "KillWait=30",
            "InactiveLimit=0",
            *(["GresTypes=gpu"] if self.gpus else []),
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory}"
            f"{gres} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        if self.gpus:  # slurmd wants one character device per GPU: links to /dev/null
            for index in range(self.gpus):
                (root / f"gpu{index}").symlink_to("/dev/null")
            files = f"{root}/gpu[0-{self.gpus - 1}]"
            (root / "gres.conf").write_text(
                f"AutoDetect=off\nNodeName={self.node} Name=gpu File={files}\n"
            )

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.processes[name] = subprocess.Popen(
            command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def start(self, timeout_s: float = 90) -> LocalSlurm:
        """Start the daemons and wait until the node is idle; Unavailable (with the daemons'
        last log lines) if it does not come up."""
        ensure_installed()
        self._write_config()
        root = self.root
        key = root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
        self._spawn(
            "munged",
            [
                "munged", "--foreground", "--force", f"--socket={root / 'munge.socket'}",
                f"--key-file={key}", f"--pid-file={root / 'munged.pid'}",
                f"--seed-file={root / 'munged.seed'}", f"--log-file={root / 'munged.log'}",
            ],
        )  # fmt: skip
        self._wait(lambda: (root / "munge.socket").exists(), 20, "munged's socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.node_state() == "idle", timeout_s, "the node to be idle")
        return self

    def node_state(self) -> str:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"no {what} after {timeout_s}s"
                node = self.run("sinfo", "-h", "-N", "-o", "%T %E").stdout.strip()
                reason += f"; node: {node}" if node else ""
                self.stop()
                raise Unavailable(f"local SLURM did not start ({reason}): {self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self) -> str:
        lines = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.is_file():
                text = path.read_text(errors="replace").strip().splitlines()
                lines += [f"{name}: {line}" for line in text[-3:] if "error" in line.lower()]
        return " | ".join(lines[-4:]) or "(no errors logged)"

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True)

    def stop(self) -> None:
        """Cancel what is left of our jobs, then stop our daemons (only the ones we started)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root")
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and self.run("squeue", "-h").stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    cluster = LocalSlurm(gpus=int(os.environ.get("GPUS", "0"))).start()
    print(f"export SLURM_CONF={cluster.conf}")
    try:
        input("SLURM is up; press Enter to stop it\n")
    finally:
        cluster.stop()
