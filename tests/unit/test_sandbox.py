"""The sandbox contains hostile code: each snippet fails inside, and this process carries on.

Most hostile snippets run twice: with every protection, and with the Python audit hook off, to
check that the operating-system layers (unprivileged uid, namespaces, rlimits) hold by
themselves. Protections that this machine cannot provide are skipped, with the reason.
"""

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from posttrain.verifiers import sandbox as sandbox_module
from posttrain.verifiers.sandbox import (SandboxLimits, SandboxUnavailable, _processes_of, missing_levels,
                                         require_protections, run_python)

FAST = SandboxLimits(timeout_s=2.0, cpu_s=2, processes=8, memory_mb=512)
BOTH = pytest.mark.parametrize("audit_hook", [True, False], ids=["all", "os_only"])


@pytest.fixture(scope="module")
def protections():
    return set(run_python("pass", limits=FAST, audit_hook=False).protections)


def require(protections, *names):
    missing = [n for n in names if n not in protections]
    if missing:
        pytest.skip(f"protection unavailable on this machine: {missing}")


def test_plain_code_runs_and_reports_its_protections():
    result = run_python("import sys\nprint(sys.stdin.read()[::-1])\nprint('err', file=sys.stderr)",
                        stdin="olleh", limits=FAST)
    assert result.ok and result.returncode == 0
    assert result.stdout == "hello\n" and result.stderr == "err\n"
    assert not result.timed_out and result.killed_reason is None
    assert {"new_session", "temp_workdir", "minimal_env", "rlimits"} <= set(result.protections)


def test_environment_is_minimal_and_workdir_is_fresh_and_removed():
    os.environ["POSTTRAIN_FAKE_SECRET"] = "hunter2"
    try:
        result = run_python("import os, sys\nprint(os.environ.get('POSTTRAIN_FAKE_SECRET'))\n"
                            "print(os.getcwd())\nprint(sorted(os.listdir('.')))\nprint(open('data.txt').read())",
                            files={"data.txt": "payload"}, limits=FAST)
    finally:
        del os.environ["POSTTRAIN_FAKE_SECRET"]
    secret, cwd, listing, data = result.stdout.splitlines()
    assert secret == "None"
    assert listing == "['data.txt', 'main.py']" and data == "payload"
    assert not os.path.exists(cwd)  # deleted afterwards


def test_bad_file_names_are_rejected():
    with pytest.raises(ValueError, match="'../x'"):
        run_python("pass", files={"../x": ""})
    with pytest.raises(ValueError, match="main.py"):
        run_python("pass", files={"main.py": ""})


def test_infinite_loop_is_killed_at_the_wall_clock_limit():
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30)
    result = run_python("while True:\n    pass", limits=limits)
    assert result.timed_out and result.killed_reason == "timeout"
    assert result.returncode == -9
    assert 1.0 <= result.duration_s < 3.0


def test_cpu_limit_stops_a_busy_loop():
    result = run_python("while True:\n    pass", limits=SandboxLimits(timeout_s=10.0, cpu_s=1))
    assert result.killed_reason == "cpu_limit" and not result.timed_out


@BOTH
def test_huge_allocation_fails_inside(audit_hook):
    result = run_python("x = bytearray(10**11)", limits=FAST, audit_hook=audit_hook)
    assert result.returncode == 1 and "MemoryError" in result.stderr


def test_fork_bomb_is_contained_by_the_process_limit(protections):
    require(protections, "drop_privileges")
    result = run_python("import os\nwhile True:\n    os.fork()", limits=FAST, audit_hook=False)
    assert not result.ok
    assert "BlockingIOError" in result.stderr or result.timed_out  # fork() refused by RLIMIT_NPROC
    assert _processes_of(result.uid) == []  # nothing of the sandbox's uid survives


def test_escaped_children_are_killed_too(protections):
    """Children that leave the process group with setsid() are found by their uid."""
    require(protections, "drop_privileges")
    code = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(60)\n"
    result = run_python(code, limits=FAST, audit_hook=False)
    assert result.ok
    assert _processes_of(result.uid) == []


@BOTH
def test_writing_to_etc_is_refused(audit_hook, protections):
    if not audit_hook:
        require(protections, "drop_privileges")
    target = f"/etc/posttrain_escape_{uuid.uuid4().hex}"
    result = run_python(f"open({target!r}, 'w').write('x')", limits=FAST, audit_hook=audit_hook)
    assert result.returncode == 1 and "PermissionError" in result.stderr
    assert not os.path.exists(target)


@BOTH
def test_writing_to_tmp_does_not_reach_the_host(audit_hook, protections):
    if not audit_hook:
        require(protections, "private_tmp")
    name = f"posttrain_escape_{uuid.uuid4().hex}"
    code = f"import os\ntry:\n    open('/tmp/{name}', 'w').write('x')\nexcept PermissionError:\n    print('refused')\n"
    if "private_tmp" in protections:  # a shell bypasses the audit hook; only the private tmpfs stops it
        code += f"os.system('echo x > /var/tmp/{name}')"
    result = run_python(code, limits=FAST, audit_hook=audit_hook, landlock=audit_hook)  # os_only: the tmpfs alone
    assert result.stdout.startswith("refused") == audit_hook
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/var/tmp/{name}")


def test_landlock_alone_confines_a_shell(protections, tmp_path):
    """Without namespaces or the audit hook (as for a user without root): Landlock by itself."""
    require(protections, "landlock_fs")
    shared = Path(tempfile.mkdtemp(prefix="posttrain-landlock-"))  # world-readable, like a home directory
    try:
        (shared / "notes.txt").write_text("private notes\n")
        os.chmod(shared, 0o755)
        os.chmod(shared / "notes.txt", 0o666)
        code = (f"import os\nos.system('cat {shared}/notes.txt; ls {shared}; echo x >> {shared}/notes.txt; "
                f"echo y > {shared}/new.txt')\nopen('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())")
        result = run_python(code, limits=FAST, audit_hook=False, private_tmp=False, isolate_network=False)
        assert result.ok and result.stdout.strip().endswith("ok")  # its own working directory still works
        assert "private notes" not in result.stdout and "notes.txt" not in result.stdout
        assert (shared / "notes.txt").read_text() == "private notes\n" and not (shared / "new.txt").exists()
        assert "landlock_fs" in result.protections and "private_tmp" not in result.protections
    finally:
        shutil.rmtree(shared)


def test_required_levels_fail_loudly_and_missing_ones_warn_once(monkeypatch, capsys):
    monkeypatch.setattr(sandbox_module, "_probed", ("new_session", "rlimits", "net_namespace"))
    monkeypatch.setattr(sandbox_module, "_warned", False)
    assert missing_levels(sandbox_module._probed) == ["filesystem", "processes"]
    with pytest.raises(SandboxUnavailable, match=r"cannot confine \['filesystem'\].*Landlock"):
        require_protections(["filesystem", "network"])
    assert require_protections(["network"]) == sandbox_module._probed
    require_protections([])
    assert capsys.readouterr().err.count("cannot confine ['filesystem', 'processes']") == 1
    with pytest.raises(ValueError, match="unknown sandbox level"):
        require_protections(["filesytem"])


@BOTH
def test_network_access_fails_fast(audit_hook, protections):
    if not audit_hook:
        require(protections, "net_namespace")  # never let a connect reach a real network
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    code = ("import socket\nfor address in [('127.0.0.1', %d), ('8.8.8.8', 53)]:\n"
            "    s = socket.socket()\n    s.settimeout(1)\n    try:\n        s.connect(address)\n"
            "        print('connected', address)\n    except OSError as err:\n        print('refused', type(err).__name__)\n") % port
    try:
        result = run_python(code, limits=FAST, audit_hook=audit_hook)
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing reached our listener on the host's loopback
    finally:
        listener.close()
    assert result.stdout.count("refused") == 2, result.stdout
    assert result.duration_s < 1.5  # unreachable at once, not a 1 s connect timeout


@BOTH
def test_killing_the_parent_is_refused(audit_hook, protections):
    if not audit_hook:
        require(protections, "drop_privileges")
    result = run_python("import os\nos.kill(os.getppid(), 9)", limits=FAST, audit_hook=audit_hook)
    assert result.returncode == 1 and "PermissionError" in result.stderr
    assert os.getpid() > 0  # and here we still are, running the next line of the test


def test_output_is_truncated_head_and_tail():
    limits = SandboxLimits(timeout_s=5.0, output_bytes=1000)
    result = run_python("print('A' * 100000)\nprint('END')", limits=limits)
    assert result.ok
    assert result.stdout.startswith("A" * 500) and result.stdout.endswith("END\n")
    assert "bytes of output dropped" in result.stdout
    assert len(result.stdout) < 1100


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)


def test_sandbox_requirement_is_read_from_the_config_and_checked_at_start(monkeypatch):
    from posttrain.config import ConfigError, load_config
    from posttrain.recipes.rl.config import RLConfig
    from posttrain.recipes.rl.rewards import check_sandbox

    cfg = load_config(RLConfig, None, ["reward.functions=[code]", "reward.sandbox.require=[filesystem,network]"])
    assert cfg.reward.sandbox.require == ["filesystem", "network"]
    with pytest.raises(ConfigError, match="reward.sandbox.require: unknown level.*'filesytem'"):
        load_config(RLConfig, None, ["reward.sandbox.require=[filesytem]"])
    monkeypatch.setattr(sandbox_module, "_probed", ("new_session", "rlimits", "net_namespace"))
    with pytest.raises(SandboxUnavailable, match="filesystem"):
        check_sandbox(cfg.reward.sandbox.require, cfg.reward.functions)
    monkeypatch.setattr(sandbox_module, "_probed", ("landlock_fs", "net_namespace", "pid_namespace"))
    check_sandbox(cfg.reward.sandbox.require, cfg.reward.functions)  # provided: the run starts
