"""Child side of `posttrain.verifiers.sandbox`: lock this process down, then run the user's code.

Run as a script (``python -I -X utf8 _sandbox_boot.py CONFIG_JSON``), standard library only, in
a new session that the parent kills as a whole. Order matters:

1. (root) new network namespace: no interface but a downed loopback, so every connect fails
   at once with "Network is unreachable".
2. (root) new mount namespace: fresh tmpfs over every world-writable directory (/tmp, /var/tmp,
   /dev/shm, ...) so writes there vanish with the sandbox; tmpfs over directories the
   unprivileged user could not traverse (e.g. a 0700 /root holding the Python install), with
   the working directory and the interpreter's own directories bound back in.
3. resource limits (CPU, address space, file size, open files, processes, no core files).
4. (root) drop to the unprivileged uid/gid the parent chose: RLIMIT_NPROC does not bind root.
   Then PR_SET_NO_NEW_PRIVS, so a setuid binary cannot give the privileges back.
5. Landlock (Linux >= 5.13, unprivileged): writes only beneath the working directory, reads only
   beneath the system and interpreter directories and the working directory (no home
   directories, no /tmp, no /root); from ABI 4 no TCP bind/connect, from ABI 6 no signals to
   processes outside the sandbox. Inherited by every child process, so ``subprocess`` and
   ``ctypes`` do not get around it, for root and non-root alike.
6. PID namespace where permitted: the code runs as PID 1 of a fresh namespace, so when it exits
   the kernel kills every process it left behind -- nothing can write after the verdict.
7. report the active protections on the status pipe, close it.
8. optional audit hook (PEP 578), defence in depth only -- ctypes or a child process bypass it.
9. execute ``main.py`` from the working directory as ``__main__``.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys
import types

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
WORLD_WRITABLE_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/run/shm", "/var/lock")

# Landlock, from <linux/landlock.h>; the syscall numbers are the same on every architecture.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1  # execute ... make_sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
# Read-only for the code: what a Python program and the tools it may start need. Home
# directories, /tmp, /var, /root, /srv, /mnt and /media are neither readable nor writable.
READABLE_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
                  "/sys", "/dev", "/run/systemd/resolve")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _traversable_by_others(path: str) -> bool:
    """Whether a user with no special rights can reach and read `path`."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        prefix = os.sep + os.path.join(*parts[1:i]) if i > 1 else os.sep
        mode = os.stat(prefix).st_mode
        if not mode & stat.S_IXOTH or (i == len(parts) and not mode & stat.S_IROTH):
            return False
    return True


def _blocking_ancestor(path: str) -> str | None:
    """Highest ancestor of `path` that others cannot traverse, if any."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts)):
        prefix = os.sep + os.path.join(*parts[1:i])
        if not os.stat(prefix).st_mode & stat.S_IXOTH:
            return prefix
    return None


def _private_filesystem(needed: list[str], tmpfs_bytes: int) -> None:
    """Cover world-writable and untraversable directories with tmpfs; bind `needed` back."""
    fds = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in needed}
    ids = {path: (os.fstat(fd).st_dev, os.fstat(fd).st_ino) for path, fd in fds.items()}
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    covered: list[tuple[str, str]] = []
    for path in WORLD_WRITABLE_CANDIDATES:
        if os.path.isdir(path) and not os.path.islink(path) and os.stat(path).st_mode & stat.S_IWOTH:
            covered.append((path, "1777"))
    for path in needed:
        blocked = _blocking_ancestor(path)
        if blocked and all(blocked != c for c, _ in covered):
            covered.append((blocked, "0755"))
    mounted: list[str] = []
    try:
        for target, mode in sorted(covered, key=lambda c: len(c[0])):
            # A blocked directory inside one already covered (a 0700 checkout under /tmp) is gone
            # from the fresh tmpfs: recreate the mount point before covering it.
            os.makedirs(target, exist_ok=True)
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode={mode}")
            mounted.append(target)
        for path in sorted(needed, key=len):
            try:
                same = (os.stat(path).st_dev, os.stat(path).st_ino) == ids[path]
            except FileNotFoundError:
                same = False
            if not same:
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fds[path]}", path, None, MS_BIND | MS_REC)
                mounted.append(path)
    except OSError:
        for target in reversed(mounted):  # back to the host's view, so the code can still run
            _libc.umount2(os.fsencode(target), MNT_DETACH)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(workdir: str, readable: list[str]) -> list[str]:
    """Restrict this process and its future children with Landlock; the protections obtained.

    Needs no_new_privs (set before). Returns [] where the kernel has no Landlock.
    """
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return []
    fs_all = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) \
        | (FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(fs_all, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # older kernels reject fields they do not know
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return []
    read_dir = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    read_file = FS_EXECUTE | FS_READ_FILE
    file_rights = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (FS_TRUNCATE if abi >= 3 else 0)

    def allow(path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # absent on this system: nothing to allow
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= file_rights if access & FS_WRITE_FILE else read_file
            rule = _PathBeneathAttr(access, fd)
            _check(_libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0),
                   f"landlock rule for {path}")
        finally:
            os.close(fd)

    try:
        for path in readable:
            allow(path, read_dir)
        allow(workdir, fs_all)
        allow(os.devnull, FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0))
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    except OSError as err:
        print(f"sandbox: landlock not applied: {err}", file=sys.stderr)
        return []
    finally:
        os.close(ruleset)
    active = ["landlock_fs"]
    if abi >= 4:
        active.append("landlock_net")
    if abi >= 6:
        active.append("landlock_signals")
    return active


def _interpreter_paths(*extra: str) -> list[str]:
    """Directories the user's code needs: Python's own, plus `extra` (the working directory)."""
    paths = [*extra, sys.base_prefix, sys.prefix] + [p for p in sys.path if os.path.isdir(p)]
    real = sorted({os.path.realpath(p) for p in paths}, key=len)
    keep: list[str] = []
    for path in real:  # drop paths inside one already kept
        if not any(path == k or path.startswith(k.rstrip(os.sep) + os.sep) for k in keep):
            keep.append(path)
    return keep


def _count_own_processes() -> int:
    uid = os.getuid()
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return count


def _set_limits(limits: dict, existing_processes: int) -> None:
    cpu = limits["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at the soft limit
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts every process of the real uid. A fresh uid starts at zero; an
    # ordinary user already has processes, so allow that many more.
    nproc = limits["processes"] + existing_processes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _install_audit_hook(workdir: str) -> None:
    """Refuse writes outside `workdir`, network use, and signals to unrelated processes."""
    root = os.path.realpath(workdir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    network = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
               "socket.gethostbyname", "socket.gethostbyaddr"}
    path_events = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
                   "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,), "os.link": (1,),
                   "os.truncate": (0,), "os.utime": (0,)}

    def inside(path) -> bool:
        if isinstance(path, int):  # an already open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def is_child(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return int(f.read().rsplit(b")", 1)[1].split()[1]) == os.getpid()
        except (OSError, ValueError, IndexError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & write_flags) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the working directory")
        elif event in network:
            raise PermissionError(f"sandbox: network access is not allowed ({event})")
        elif event == "os.kill":
            pid = args[0]
            if pid not in (0, os.getpid()) and not (pid > 0 and is_child(pid)):
                raise PermissionError(f"sandbox: signalling process {pid} is not allowed")
        elif event == "os.killpg" and args[0] != os.getpgid(0):
            raise PermissionError(f"sandbox: signalling process group {args[0]} is not allowed")

    sys.addaudithook(hook)


def _namespaces(cfg: dict, is_root: bool, workdir: str) -> list[str]:
    """Enter new network / mount / PID namespaces where permitted; the protections obtained.

    The PID namespace is only requested here: `main` forks into it once the rest is set up."""
    if not is_root:  # an unprivileged user may still be allowed a user namespace, and inside it more
        active = []
        if _libc.unshare(CLONE_NEWUSER) != 0:
            return active
        if cfg["isolate_network"] and _libc.unshare(CLONE_NEWNET) == 0:
            active.append("net_namespace")
        if _libc.unshare(CLONE_NEWPID) == 0:
            active.append("pid_namespace")
        return active
    active = []
    if cfg["isolate_network"] and _libc.unshare(CLONE_NEWNET) == 0:
        active.append("net_namespace")
    if cfg["private_tmp"] and _libc.unshare(CLONE_NEWNS) == 0:
        try:
            _private_filesystem(_interpreter_paths(workdir), cfg["tmpfs_bytes"])
            active.append("private_tmp")
        except OSError as err:
            print(f"sandbox: private filesystem not set up: {err}", file=sys.stderr)
    if _libc.unshare(CLONE_NEWPID) == 0:
        active.append("pid_namespace")
    return active


def _enter_pid_namespace(status_fd: int) -> None:
    """Fork into the PID namespace `_namespaces` asked for; return in the process that runs the code.

    Three processes: this one waits outside and exits as the code did, so the supervisor sees its
    status; its child is PID 1 of the namespace and only reaps; PID 1's child runs the code. The
    code is not PID 1 itself because the kernel drops signals PID 1 has no handler for (SIGXCPU
    and SIGXFSZ of the resource limits among them). When the code exits, PID 1 reports its status
    on a pipe and exits, and the kernel kills whatever else is left in the namespace."""
    status_r, status_w = os.pipe()
    if os.fork() != 0:  # outside: wait for PID 1, then mirror the code's status
        os.close(status_w)
        os.close(status_fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)  # a signal to the group reaches the code too; wait for it
        os.wait()
        reported = os.read(status_r, 32)
        _exit_as(int(reported) if reported else 9)  # no report: PID 1 was killed (by the supervisor)
    os.close(status_r)
    code_pid = os.fork()
    if code_pid == 0:
        os.close(status_w)
        return
    os.close(status_fd)
    while True:  # PID 1 inherits every orphan of the namespace: reap them until the code exits
        pid, status = os.wait()
        if pid == code_pid:
            os.write(status_w, str(status).encode())
            os._exit(0)


def _exit_as(status: int) -> None:
    """Exit the way a child with wait status `status` did: with its code, or killed by its signal."""
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else signal.SIGKILL
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is to continue: still report it


def main() -> None:
    cfg = json.loads(sys.argv[1])
    workdir, uid, gid = cfg["workdir"], cfg["uid"], cfg["gid"]
    active: list[str] = []
    is_root = os.geteuid() == 0
    own_processes = 0 if is_root else _count_own_processes()  # before a user namespace hides uids
    active += _namespaces(cfg, is_root, workdir)
    if "pid_namespace" in active:
        _enter_pid_namespace(cfg["status_fd"])
    # The working directory belongs to `uid` (mode 0700); everything else must be open to others.
    reachable = [os.path.dirname(workdir), *_interpreter_paths()]
    dropping = is_root and uid is not None and all(_traversable_by_others(p) for p in reachable)
    _set_limits(cfg["limits"], 0 if dropping else own_processes + 2)  # + 2: the two waiting processes
    active.append("rlimits")
    if dropping:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        active.append("drop_privileges")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        active.append("no_new_privs")
        if cfg["landlock"]:
            active += _landlock(workdir, [*READABLE_ROOTS, *_interpreter_paths()])
    os.chdir(workdir)
    if cfg["audit_hook"]:
        active.append("audit_hook")
    os.write(cfg["status_fd"], json.dumps(active).encode())
    os.close(cfg["status_fd"])
    if cfg["audit_hook"]:
        _install_audit_hook(workdir)
    run_main(os.path.join(workdir, cfg["main"]), workdir)


def run_main(path: str, workdir: str) -> None:
    """Execute `path` as ``__main__``, with `workdir` first on the import path."""
    sys.argv = [path]
    sys.path.insert(0, workdir)
    sys.dont_write_bytecode = True
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - print as Python would, minus this file's frame
        import traceback

        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
