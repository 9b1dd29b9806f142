"""Run untrusted Python code in a locked-down subprocess.

Layers, outermost first (each result lists those that were active in `protections`):

* ``new_session``: the child leads its own process group; on timeout or exit the WHOLE group is
  SIGKILLed, and with ``drop_privileges`` every process of the sandbox's uid too (a child that
  called ``setsid()`` has left the group but not the uid).
* ``temp_workdir``: a fresh directory holding ``main.py`` (and any extra files), deleted after.
* ``minimal_env``: no inherited environment variables (no secrets, no PYTHONPATH).
* ``drop_privileges`` (when run as root): the code runs as a fresh unprivileged uid/gid picked
  per run. RLIMIT_NPROC does not bind root, and a per-run uid also keeps concurrent sandboxes
  from counting, or signalling, each other's processes.
* ``rlimits``: CPU seconds, address space, file size, open files, processes, no core dumps.
* ``net_namespace``: a private network namespace with no usable interface.
* ``private_tmp``: a private mount namespace with fresh tmpfs over world-writable directories.
* ``no_new_privs``: setuid binaries cannot raise privileges again.
* ``landlock_fs`` (Linux >= 5.13, root or not): the kernel refuses writes outside the working
  directory and reads outside the system and interpreter directories (no home directories, no
  /tmp, no /root), for the code and every process it starts.
* ``landlock_net`` (Landlock ABI >= 4): no TCP bind or connect. ``landlock_signals`` (ABI >= 6):
  no signals to processes outside the sandbox.
* ``pid_namespace``: the code runs as PID 1 of a fresh PID namespace, so the kernel kills every
  process it left behind the moment it exits; nothing writes after it.
* ``audit_hook``: a PEP 578 hook refusing writes outside the working directory, sockets and
  signals to unrelated processes -- defence in depth, since ctypes or a subprocess bypass it.

Levels (`LEVELS`, what ``reward.sandbox.require`` names): ``filesystem`` holds with
``landlock_fs``, or as root with ``drop_privileges`` + ``private_tmp``; ``network`` with
``net_namespace`` or ``landlock_net``; ``processes`` with ``pid_namespace``, or ``drop_privileges``
(every process of the sandbox's uid is killed). `require_protections` checks them once, up front.

Not covered: the code can read the system directories (/usr, /etc, ...), use CPU up to its
limits, and see other processes in /proc; without Landlock and without root, it can write
wherever the user can. Use a container or VM for adversarial workloads beyond RL rewards.
The child setup lives in `_sandbox_boot.py`; this module is the parent side.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

_BOOT = str(Path(__file__).with_name("_sandbox_boot.py"))
_UID_RANGE = (1_000_000_000, 1_100_000_000)  # far above any uid a distribution hands out
_MiB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one run.

    Attributes:
        timeout_s: wall-clock seconds before the whole process group is killed.
        cpu_s: CPU seconds per process (SIGXCPU).
        memory_mb: address space per process, MiB (allocations beyond it raise MemoryError).
        file_size_mb: largest file a process may write, MiB (SIGXFSZ).
        open_files: file descriptors per process.
        processes: processes (and threads) the sandbox may have at once.
        output_bytes: stdout and stderr are each cut to their first and last
            ``output_bytes // 2`` bytes, with a marker in between.
        tmpfs_mb: size of each private tmpfs (``private_tmp``), MiB.
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    open_files: int = 64
    processes: int = 16
    output_bytes: int = 64 * 1024
    tmpfs_mb: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        returncode: exit status; negative -N when killed by signal N; None if never started.
        stdout, stderr: decoded output (UTF-8, invalid bytes replaced), truncated as configured.
        timed_out: the wall-clock limit was hit.
        killed_reason: "timeout", "cpu_limit", "file_size_limit", "signal SIGxxx", or None.
        duration_s: wall-clock seconds from start to exit.
        protections: the protections that were active (see the module docstring).
        uid: the unprivileged uid the code ran as, or None if privileges were not dropped.
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    duration_s: float
    protections: tuple[str, ...] = ()
    uid: int | None = None

    @property
    def ok(self) -> bool:
        """Exited with status 0 in time."""
        return self.returncode == 0 and not self.timed_out


class _Capture:
    """Keeps the head and tail of a stream, `limit` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            del self.tail[: len(self.tail) - self.half]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        middle = f"\n...[sandbox: {dropped} bytes of output dropped]...\n".encode() if dropped else b""
        return bytes(self.head + middle + self.tail).decode("utf-8", errors="replace")


def _safe_relative(name: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name == "main.py":
        raise ValueError(f"sandbox file name {name!r} must be a relative path inside the working directory "
                         "(no '..', not 'main.py')")
    return path


def _processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # it exited meanwhile
        if state != b"Z":
            pids.append(int(name))
    return pids


def _kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of `uid`, repeating while a fork races us."""
    for _ in range(rounds):
        pids = _processes_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def _killed_reason(returncode: int | None, timed_out: bool) -> str | None:
    if timed_out:
        return "timeout"
    if returncode is None or returncode >= 0:
        return None
    sig = -returncode
    if sig == signal.SIGXCPU:
        return "cpu_limit"
    if sig == signal.SIGXFSZ:
        return "file_size_limit"
    try:
        return f"signal {signal.Signals(sig).name}"
    except ValueError:
        return f"signal {sig}"


def run_python(
    code: str,
    *,
    files: Mapping[str, str] | None = None,
    stdin: str | None = None,
    limits: SandboxLimits = SandboxLimits(),
    isolate_network: bool = True,
    private_tmp: bool = True,
    audit_hook: bool = True,
    landlock: bool = True,
) -> SandboxResult:
    """Run `code` as ``main.py`` in a fresh working directory, with `files` written beside it.

    Args:
        code: Python source run as ``__main__``.
        files: extra files, relative name -> text.
        stdin: text fed to the process's stdin through a pipe (read once, gone); None for
            an empty stdin.
        limits: see `SandboxLimits`.
        isolate_network, private_tmp, audit_hook, landlock: switch single protections off (for
            tests that check the others hold on their own).

    Returns:
        A `SandboxResult`; this function raises only for bad arguments, never for what the
        code does.
    """
    relative = {_safe_relative(name): text for name, text in (files or {}).items()}
    workdir = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    try:
        uid = random.SystemRandom().randrange(*_UID_RANGE) if os.geteuid() == 0 else None
        _write_files(workdir, {Path("main.py"): code, **relative}, uid)
        status_r, status_w = os.pipe()
        config = {
            "workdir": workdir, "main": "main.py", "uid": uid, "gid": uid, "status_fd": status_w,
            "isolate_network": isolate_network, "private_tmp": private_tmp, "audit_hook": audit_hook,
            "landlock": landlock, "tmpfs_bytes": limits.tmpfs_mb * _MiB,
            "limits": {"cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb * _MiB,
                       "file_size_bytes": limits.file_size_mb * _MiB, "open_files": limits.open_files,
                       "processes": limits.processes},
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-X", "utf8", _BOOT, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=workdir, env=env, start_new_session=True, pass_fds=(status_w,),
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        return _supervise(proc, status_r, (stdin or "").encode("utf-8"), limits, start, uid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _write_files(workdir: str, files: Mapping[Path, str], uid: int | None) -> None:
    for rel, text in files.items():
        target = Path(workdir, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if uid is not None:  # hand the directory over to the sandbox's user, and only to it
        for dirpath, _dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, uid)
        os.chmod(workdir, 0o700)


def _supervise(proc: subprocess.Popen, status_r: int, stdin: bytes, limits: SandboxLimits,
               start: float, uid: int | None) -> SandboxResult:
    """Feed stdin, collect output, enforce the wall clock, then kill whatever is left."""
    captures = {proc.stdout.fileno(): _Capture(limits.output_bytes),
                proc.stderr.fileno(): _Capture(limits.output_bytes)}
    status = bytearray()
    sel = selectors.DefaultSelector()
    for fd in (*captures, status_r):
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    try:
        exit_fd = os.pidfd_open(proc.pid)  # readable when the child exits (Linux >= 5.3)
        sel.register(exit_fd, selectors.EVENT_READ)
    except (AttributeError, OSError):
        exit_fd = None
    deadline = start + limits.timeout_s
    timed_out = False
    try:
        while not _exited(proc.pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=remaining if exit_fd is not None else min(remaining, 0.02)):
                if key.fd == stdin_fd:
                    stdin = _feed_stdin(sel, proc, stdin)
                elif key.fd != exit_fd:
                    _read_into(sel, key.fd, captures, status, status_r)
        # Kill the group before reaping the leader, so its group id cannot be reused meanwhile.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if uid is not None:
            _kill_uid(uid)
        proc.wait()
        duration = time.monotonic() - start
        _drain(sel, captures, status, status_r, exit_fd, stdin_fd)
    finally:
        sel.close()
        for fd in (status_r, exit_fd):
            if fd is not None:
                os.close(fd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    try:
        protections = ["new_session", "temp_workdir", "minimal_env", *json.loads(status.decode() or "[]")]
    except ValueError:
        protections = ["new_session", "temp_workdir", "minimal_env"]
    stdout_capture, stderr_capture = captures.values()
    return SandboxResult(
        returncode=proc.returncode, stdout=stdout_capture.text(), stderr=stderr_capture.text(),
        timed_out=timed_out, killed_reason=_killed_reason(proc.returncode, timed_out),
        duration_s=duration, protections=tuple(protections),
        uid=uid if "drop_privileges" in protections else None,
    )


def _exited(pid: int) -> bool:
    """Whether the child has exited, WITHOUT reaping it (its pid stays reserved until then)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _feed_stdin(sel: selectors.BaseSelector, proc: subprocess.Popen, data: bytes) -> bytes:
    try:
        data = data[os.write(proc.stdin.fileno(), data[:65536]) if data else 0 :]
    except BlockingIOError:
        return data
    except BrokenPipeError:  # the code closed its stdin or exited: the rest is not wanted
        data = b""
    if not data:
        sel.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return data


def _read_into(sel, fd: int, captures: dict, status: bytearray, status_r: int) -> None:
    data = os.read(fd, 65536)
    if not data:
        sel.unregister(fd)
    elif fd == status_r:
        status += data[: 4096 - len(status)]
    else:
        captures[fd].feed(data)


def _drain(sel, captures: dict, status: bytearray, status_r: int, exit_fd, stdin_fd: int) -> None:
    """Read what is left after every writer is dead; bounded in case one escaped the kill."""
    end = time.monotonic() + 1.0
    readers = [key.fd for key in sel.get_map().values() if key.fd not in (exit_fd, stdin_fd)]
    while readers and time.monotonic() < end:
        for key, _ in sel.select(timeout=max(0.0, end - time.monotonic())):
            if key.fd in readers:
                _read_into(sel, key.fd, captures, status, status_r)
        readers = [key.fd for key in sel.get_map().values() if key.fd not in (exit_fd, stdin_fd)]


# What each level needs: any one of the alternatives (each a set of protections) suffices.
LEVELS: dict[str, tuple[frozenset[str], ...]] = {
    "filesystem": (frozenset({"landlock_fs"}), frozenset({"drop_privileges", "private_tmp"})),
    "network": (frozenset({"net_namespace"}), frozenset({"landlock_net"})),
    "processes": (frozenset({"pid_namespace"}), frozenset({"drop_privileges"})),
}


class SandboxUnavailable(RuntimeError):
    """A required sandbox level cannot be provided on this machine."""


_probed: tuple[str, ...] | None = None


def available_protections() -> tuple[str, ...]:
    """The protections a sandboxed run gets on this machine (probed once per process)."""
    global _probed
    if _probed is None:
        _probed = run_python("pass", limits=SandboxLimits(timeout_s=30.0)).protections
    return _probed


def missing_levels(protections: Sequence[str], levels: Sequence[str] = tuple(LEVELS)) -> list[str]:
    """The `levels` that `protections` do not provide."""
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"unknown sandbox level(s) {unknown}; known: {sorted(LEVELS)}")
    have = set(protections)
    return [level for level in levels if not any(option <= have for option in LEVELS[level])]


_warned = False


def require_protections(levels: Sequence[str] = (), key: str = "reward.sandbox.require") -> tuple[str, ...]:
    """Probe the sandbox; raise `SandboxUnavailable` if any of `levels` is missing, and warn once
    (to stderr) about every level that is missing but not required. Returns the protections.
    `key` is the setting that asked for `levels`, named in the error and the warning."""
    global _warned
    protections = available_protections()
    missing = missing_levels(protections, tuple(LEVELS))
    required = missing_levels(protections, levels)
    if required:
        raise SandboxUnavailable(
            f"{key} asks for {list(levels)}, but on this machine the sandbox cannot confine "
            f"{required} (active protections: {list(protections)}). "
            + _HOW_TO_GET.get(required[0], ""))
    if missing and not _warned:
        _warned = True
        print(f"posttrain: warning: the code sandbox cannot confine {missing} on this machine (active: "
              f"{list(protections)}); set {key} to refuse to run like this", file=sys.stderr)
    return protections


_HOW_TO_GET = {
    "filesystem": "It needs Landlock (Linux >= 5.13 with landlock in the LSM list) or running as root.",
    "network": "It needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), "
               "Landlock ABI >= 4 (Linux >= 6.7) or running as root.",
    "processes": "It needs unprivileged user namespaces or running as root.",
}
