"""A separately started Dask cluster (``dask scheduler`` + ``dask worker`` OS processes),
optionally inside a private mount namespace where the given directories are covered by
empty tmpfs mounts: whatever those processes write under a hidden path never reaches the
caller's disk, as with workers on other hosts. Test and benchmark support only."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SeparateCluster", "can_hide_paths", "separate_cluster"]

#: Environment variables never passed to the cluster's processes (their credentials
#: must come from the job).
_SECRET_PREFIXES = ("AWS_", "PIXELQUERY_S3_")


@dataclass(frozen=True)
class SeparateCluster:
    address: str
    log_path: Path  # scheduler and worker output (stdout + stderr)
    workers: int

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def can_hide_paths() -> str | None:
    """``None`` when private mount namespaces work here, else why not."""
    if sys.platform != "linux":
        return "private mount namespaces need Linux"
    if os.geteuid() != 0:
        return "mounting tmpfs in a private namespace needs root"
    if shutil.which("unshare") is None:
        return "the unshare tool (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True, check=False)
    if probe.returncode:
        return f"unshare --mount failed: {probe.stderr.strip()}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def separate_cluster(*, workers: int = 2, threads: int = 1, memory_limit: str = "1GiB",
                     hide: Sequence[str | os.PathLike[str]] = (), log_path: Path,
                     env: Mapping[str, str] | None = None,
                     timeout_s: float = 60.0) -> Iterator[SeparateCluster]:
    """Start ``dask scheduler`` and ``workers`` x ``dask worker`` on 127.0.0.1.

    ``hide``: directories covered by an empty tmpfs for these processes (needs
    :func:`can_hide_paths`). The processes get this environment without any ``AWS_*`` or
    ``PIXELQUERY_S3_*`` variable.
    """
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    dask = shlex.quote(str(bin_dir / "dask"))
    lines = ["set -e"]
    lines += [f"mount -t tmpfs tmpfs {shlex.quote(os.fspath(p))}" for p in hide]
    lines += ["cd /",
              f"{dask} scheduler --host 127.0.0.1 --port {port} --no-dashboard --no-show &"]
    lines += [f"{dask} worker {address} --name w{i} --nthreads {threads} --nworkers 1 "
              f"--memory-limit {memory_limit} --no-dashboard --local-directory /tmp/pqb-w{i} &"
              for i in range(workers)]
    lines += ["wait"]
    cmd = ["sh", "-c", "\n".join(lines)]
    if hide:
        cmd = ["unshare", "--mount", "--propagation", "private", *cmd]
    clean = {k: v for k, v in (env or os.environ).items() if not k.startswith(_SECRET_PREFIXES)}
    clean["PATH"] = f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the cluster exited early:\n{log_path.read_text()[-3000:]}")
            try:
                with Client(address, timeout="2s") as client:
                    client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield SeparateCluster(address, log_path, workers)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
