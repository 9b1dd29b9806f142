"""Issue 9's attack classes against the sandbox and the code reward, as root and as an ordinary user.

`hostile_cases.py` holds the snippets; each runs once per identity (module fixtures), and every
test below judges one class from outside the sandbox: the host's files, its processes, its
loopback listener, and what the reward paid. The ordinary user is created for the run (CI runs
as root) and runs the cases with Debian's /usr/bin/python3, importing a copy of the sandbox
modules, which need only the standard library. A class whose kernel layer this machine lacks is
skipped with the reason (the protections reported say which), never judged leniently.
"""

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import hostile_cases
from posttrain.verifiers import sandbox as sandbox_module
from posttrain.verifiers.sandbox import missing_levels

SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGE_FILES = ("sandbox.py", "_sandbox_boot.py", "code.py", "workers.py")


@pytest.fixture(scope="module")
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.1)
    yield sock
    sock.close()


def _make_home(home: Path, tag: str, owner: int | None = None) -> None:
    (home / ".bashrc").write_text("# the user's shell setup\n")
    (home / f"secret-{tag}.txt").write_text(f"secret-{tag}\n")
    os.chmod(home, 0o755)
    for path in (home / ".bashrc", home / f"secret-{tag}.txt"):
        os.chmod(path, 0o644)
        if owner is not None:
            os.chown(path, owner, owner)


@pytest.fixture(scope="module")
def as_root(listener):
    """Run in this process; the 'home' is a world-readable directory, as a user's often is."""
    tag = str(uuid.uuid4().int)[:12]  # digits: it is also a `sleep` argument
    home = Path(tempfile.mkdtemp(prefix="posttrain-hostile-home-"))
    _make_home(home, tag)
    try:
        yield home, tag, hostile_cases.run_all(str(home), tag, listener.getsockname()[1])
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def as_user(listener):
    """Run as a throwaway ordinary user, in its own home directory."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("creating a throwaway user needs root, useradd and runuser")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} (an interpreter an ordinary user can run) is not installed")
    tag = str(uuid.uuid4().int)[:12]  # digits: it is also a `sleep` argument
    user = f"pt-hostile-{tag[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", user], check=True, capture_output=True)
    package = Path(tempfile.mkdtemp(prefix="posttrain-hostile-pkg-"))
    try:
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        _make_home(home, tag, owner=entry.pw_uid)
        source = Path(sandbox_module.__file__).parent
        (package / "posttrain" / "verifiers").mkdir(parents=True)
        (package / "posttrain" / "__init__.py").write_text("")
        (package / "posttrain" / "verifiers" / "__init__.py").write_text("")
        for name in PACKAGE_FILES:
            shutil.copy(source / name, package / "posttrain" / "verifiers" / name)
        shutil.copy(hostile_cases.__file__, package / "hostile_cases.py")
        for dirpath, _dirs, files in os.walk(package):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        done = subprocess.run(
            [shutil.which("runuser"), "-u", user, "--", SYSTEM_PYTHON, "-I", str(package / "hostile_cases.py"), str(package),
             str(home), tag, str(listener.getsockname()[1])],
            capture_output=True, text=True, timeout=300, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
        assert done.returncode == 0, done.stderr
        yield home, tag, json.loads(done.stdout)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        shutil.rmtree(package, ignore_errors=True)


@pytest.fixture(params=["root", "user"])
def run(request):
    return request.getfixturevalue("as_root" if request.param == "root" else "as_user")


def require_level(results: dict, case: str, level: str) -> None:
    assert "error" not in results[case], results[case]
    if missing_levels(results[case]["protections"], [level]):
        pytest.skip(f"the sandbox cannot confine {level!r} here (active: {results[case]['protections']})")


def alive_with_argument(argument: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and argument.encode() in Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0"):
                pids.append(int(name))
        except OSError:
            pass
    return pids


def test_the_shell_cannot_write_outside_the_working_directory(run):
    home, tag, results = run
    for case in ("shell_appends_to_bashrc", "shell_writes_tmp", "ctypes_writes_tmp"):
        require_level(results, case, "filesystem")
    assert (home / ".bashrc").read_text() == "# the user's shell setup\n", results["shell_appends_to_bashrc"]
    for suffix in ("sh", "ctypes"):
        assert not os.path.exists(f"/tmp/posttrain-hostile-{tag}-{suffix}")
    assert not os.path.exists(f"/var/tmp/posttrain-hostile-{tag}-sh")


def test_the_home_directory_is_neither_listed_nor_read(run):
    home, tag, results = run
    require_level(results, "shell_lists_home", "filesystem")
    assert f"secret-{tag}" not in results["shell_lists_home"]["stdout"]
    assert results["shell_lists_home"]["stderr"].startswith("ls: cannot")  # denied, or hidden by a private /tmp
    assert f"secret-{tag}" not in results["shell_reads_home_file"]["stdout"]


def test_a_child_process_reaches_no_network(run, listener):
    _home, _tag, results = run
    require_level(results, "subprocess_connects", "network")
    assert "refused" in results["subprocess_connects"]["stdout"], results["subprocess_connects"]
    with pytest.raises(socket.timeout):
        listener.accept()


def test_processes_left_behind_are_killed_and_cannot_forge_a_verdict(run):
    _home, tag, results = run
    require_level(results, "orphan_survives", "processes")
    assert alive_with_argument(f"8.{tag}") == []
    assert alive_with_argument(f"7.{tag}") == []
    assert results["late_forged_verdict"]["passed"] == [False], results["late_forged_verdict"]


def test_the_tests_cannot_be_read_back(run):
    _home, _tag, results = run
    assert results["reads_the_tests"]["passed"] == [False], results["reads_the_tests"]


def test_always_equal_objects_do_not_pass_assert_style_tests(run):
    _home, _tag, results = run
    assert results["assert_always_equal"].get("passed") == [False] * 4, results["assert_always_equal"]


def test_input_output_tests_are_judged_outside_the_solution(run):
    _home, _tag, results = run
    assert results["io_forges_a_verdict"].get("passed") == [False], results["io_forges_a_verdict"]
    assert results["io_always_equal"].get("passed") == [False], results["io_always_equal"]
    assert results["io_honest"].get("passed") == [True, True], results["io_honest"]  # and an honest program passes
