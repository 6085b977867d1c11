"""A throw-away SLURM cluster for tests: munged + slurmctld + one slurmd per node under one temp folder.

``LocalSlurm`` writes a munge key and a ``slurm.conf`` (proctrack/linuxproc, task/none, select/cons_tres,
no accounting; all state, spool, sockets and logs under the folder), starts the daemons in the foreground
as children of the test process (munged as the ``munge`` user) and always stops them again.

``LocalSlurm()`` has one node: this host, with what ``slurmd -C`` reports. ``LocalSlurm(nodes=2)`` runs
two nodes on this host, ``megavg-n1`` and ``megavg-n2``: one ``slurmd -N NAME`` each, with the same
hardware, its own port and ``%n`` in its spool, pid and log paths. Ranks find the master by node name
(the launcher's ``MASTER_ADDR`` is the first node of the job), so the names must resolve: they are added
to ``/etc/hosts`` as ``127.0.0.1`` when missing (root only; left in place, harmless).

Client commands (``sbatch``, ``squeue``, ``scontrol``, ``scancel``) find the cluster through
``SLURM_CONF`` in :meth:`env`.

There is no slurmdbd, so ``sacct`` has no data: job state comes from ``scontrol show job``. A requeued job
waits ``cred_expire`` seconds (SLURM 22.05 refuses less than 5) and then the next scheduler pass
(``sched_interval=1``) before it starts again.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


NODE_NAMES = ("megavg-n1", "megavg-n2")
HOSTS = Path("/etc/hosts")


def unavailable_reason() -> str | None:
    """Why a local SLURM cannot be brought up here, or None when it can."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        packages = "slurmctld slurmd slurm-client munge"
        return f"SLURM not installed (missing {', '.join(missing)}; apt-get install {packages})"
    if os.geteuid() != 0:
        return "a local SLURM needs root (munged runs as the munge user, slurmd as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install the Debian munge package)"
    return None


def _resolve_locally(names: tuple[str, ...]) -> None:
    """Make ``names`` resolve to 127.0.0.1 (an ``/etc/hosts`` line, added only when one is missing)."""
    missing = []
    for name in names:
        try:
            socket.gethostbyname(name)
        except OSError:
            missing.append(name)
    if missing:
        with HOSTS.open("a") as hosts:
            hosts.write(f"127.0.0.1 {' '.join(missing)}  # megavg test SLURM nodes\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Job:
    """One job's fields from ``scontrol show job -o`` (``JobState``, ``ExitCode``, ``RestartCnt``, ...)."""

    fields: dict[str, str]

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "UNKNOWN")

    @property
    def exit_code(self) -> int:
        """The batch script's exit status (``ExitCode=<status>:<signal>``)."""
        return int(self.fields.get("ExitCode", "0:0").split(":")[0])

    @property
    def restarts(self) -> int:
        return int(self.fields.get("Restarts", "0"))


class LocalSlurm:
    """Context manager: a running one-node cluster; ``sbatch``/``wait`` submit and follow jobs."""

    def __init__(self, cred_expire: int = 5, kill_wait: int = 5, nodes: int = 1):
        if not 1 <= nodes <= len(NODE_NAMES):
            raise ValueError(f"nodes must be 1..{len(NODE_NAMES)}, got {nodes}")
        self.nodes = nodes
        # Its own folder directly under the temp dir: munged (user munge) must be able to reach it, which
        # rules out pytest's 0700 tmp_path.
        self.root = Path(tempfile.mkdtemp(prefix="megavg-slurm-"))
        self.root.chmod(0o755)
        self.cred_expire = cred_expire
        self.kill_wait = kill_wait
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self._procs: list[subprocess.Popen] = []

    # -- set-up ------------------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for client commands and submitted jobs."""
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env.update(extra)
        return env

    def _start(self) -> None:
        spools = [f"spool-{name}" for name in self.node_names] or ["spool"]
        for sub in ("state", "log", *spools):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munged()
        self.conf.write_text(self._slurm_conf())
        logs = self.root / "log"
        self._spawn(["slurmctld", "-D", "-c", "-f", str(self.conf)], logs / "slurmctld.out")
        if self.nodes == 1:
            self._spawn(["slurmd", "-D", "-f", str(self.conf)], logs / "slurmd.out")
        for name in self.node_names if self.nodes > 1 else ():
            self._spawn(["slurmd", "-D", "-N", name, "-f", str(self.conf)], logs / f"slurmd-{name}.out")
        self._wait_node_idle(timeout=30)

    @property
    def node_names(self) -> tuple[str, ...]:
        """The fake nodes' names (empty for the one-node cluster, whose node is this host)."""
        return NODE_NAMES[: self.nodes] if self.nodes > 1 else ()

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        for path in (self.munge_dir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        d = self.munge_dir
        cmd = [
            "munged", "--foreground", f"--socket={d / 'munge.socket'}", f"--key-file={key}",
            f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ]  # fmt: skip
        self._spawn(cmd, self.root / "log" / "munged.out", user="munge")
        deadline = time.monotonic() + 10
        while not (d / "munge.socket").exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create its socket; see {d / 'munged.log'}")
            time.sleep(0.05)

    def _slurm_conf(self) -> str:
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        node_line = next(line for line in node.splitlines() if line.startswith("NodeName="))
        hostname = re.match(r"NodeName=(\S+)", node_line).group(1)
        hardware = node_line.split(" UpTime=")[0].split(" ", 1)[1]  # CPUs=... RealMemory=...
        r = self.root
        multi = self.nodes > 1
        if multi:
            _resolve_locally(self.node_names)
            nodes = [
                f"NodeName={name} NodeHostname={hostname} NodeAddr=127.0.0.1 Port={_free_port()} "
                f"{hardware} State=UNKNOWN"
                for name in self.node_names
            ]
            partition_nodes = ",".join(self.node_names)
        else:
            nodes = [f"NodeName={hostname} {hardware} NodeAddr=127.0.0.1 State=UNKNOWN"]
            partition_nodes = hostname
        per_node = "-%n" if multi else ""
        return "\n".join([
            "ClusterName=megavgtest",
            f"SlurmctldHost={hostname}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_dir / 'munge.socket'},cred_expire={self.cred_expire}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}{per_node}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / f'slurmd{per_node}.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / f'slurmd{per_node}.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",  # a requeued job starts as soon as it is eligible
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            *nodes,
            f"PartitionName=test Nodes={partition_nodes} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])  # fmt: skip

    def _spawn(self, cmd: list[str], log: Path, user: str | None = None) -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, user=user)
        proc.log = log
        self._procs.append(proc)

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail}")

    def _wait_node_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            out = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
            if len(out) == self.nodes and set(out) <= {"idle", "mix"}:
                return
            if time.monotonic() > deadline:
                logs = self.root / "log"
                raise RuntimeError(f"node not idle after {timeout} s (state {out!r}); logs in {logs}")
            time.sleep(0.2)

    # -- tear-down ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel all jobs, stop slurmd, slurmctld and munged (in that order), remove the folder."""
        if self._procs and all(p.poll() is None for p in self._procs):
            self.run("scancel", "--full", "--user=root", check=False)
            deadline = time.monotonic() + self.kill_wait + 5
            while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        env = env or self.env()
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check, timeout=30)

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        """Submit a batch job; return its id."""
        out = self.run("sbatch", "--parsable", *args, env=env).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> Job:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
        return Job(fields)

    def wait(self, job_id: str, timeout: float, until=None, poll: float = 0.5) -> Job:
        """Poll until the job reaches a final state (or ``until(job)`` holds); raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if until(job) if until else job.state in FINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s: {job.fields}")
            time.sleep(poll)
