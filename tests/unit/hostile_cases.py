"""Hostile snippets, one per attack class of issue 9, run through the sandbox and the code reward.

Standard library only, so that an ordinary user can run it with Debian's /usr/bin/python3:
`test_sandbox_hostile.py` imports it as root, and also runs it as a throwaway user
(``python3 hostile_cases.py PACKAGE_DIR HOME TAG``, printing one JSON object). Each case only
RUNS the attack and records what came back; the test judges from outside the sandbox (did the
file appear, did the process survive, what did the reward pay).
"""

from __future__ import annotations

import json
import sys


def cases(home: str, tag: str, port: int) -> dict[str, dict]:
    """name -> {"kind": "sandbox" | "code", "code": ..., "tests": ...}; `tag` makes names unique,
    `port` is a listener on the host's loopback that nothing from the sandbox may reach."""
    steal_nonce = (
        "import sys\n"
        "def _stolen():\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        if 'nonce' in frame.f_locals:\n"
        "            return frame.f_locals['nonce']\n"
        "        frame = frame.f_back\n"
    )
    return {
        # 1. the filesystem, from a shell and from ctypes: around the Python audit hook
        "shell_appends_to_bashrc": {"kind": "sandbox", "code": (
            "import subprocess\n"
            f"subprocess.run(['sh', '-c', 'echo pwned-{tag} >> {home}/.bashrc'])\n")},
        "shell_lists_home": {"kind": "sandbox", "code": (
            "import subprocess\n"
            f"subprocess.run(['ls', '-a', '{home}'])\n")},
        "shell_reads_home_file": {"kind": "sandbox", "code": (
            "import subprocess\n"
            f"subprocess.run(['cat', '{home}/secret-{tag}.txt'])\n")},
        "shell_writes_tmp": {"kind": "sandbox", "code": (
            "import os\n"
            f"os.system('echo x > /tmp/posttrain-hostile-{tag}-sh; echo x > /var/tmp/posttrain-hostile-{tag}-sh')\n")},
        "ctypes_writes_tmp": {"kind": "sandbox", "code": (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None)\n"
            f"fd = libc.open(b'/tmp/posttrain-hostile-{tag}-ctypes', os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "print('fd', fd)\n")},
        # network from a child process (no audit hook there)
        "subprocess_connects": {"kind": "sandbox", "code": (
            "import subprocess, sys\n"
            "probe = \"import socket\\ns = socket.socket()\\ns.settimeout(1)\\ntry:\\n    s.connect(('127.0.0.1', %d))\\n"
            "    print('connected')\\nexcept OSError as err:\\n    print('refused', err.errno)\"\n"
            "subprocess.run([sys.executable, '-c', probe])\n" % port)},
        # 2. a verdict forged by a process that outlives the harness (it even has the nonce)
        "late_forged_verdict": {"kind": "code", "tests": ["assert answer() == 42"], "code": steal_nonce + (
            "import os, time\n"
            "nonce = _stolen()\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    time.sleep(0.3)\n"
            "    os.write(1, b'\\n' + nonce.strip() + b' 1\\n')\n"
            f"    os.execv('/bin/sleep', ['sleep', '7.{tag}'])\n"
            "def answer():\n"
            "    return 0\n")},
        # a process left behind, to check that nothing of the sandbox survives it
        "orphan_survives": {"kind": "sandbox", "code": (
            "import os\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execv('/bin/sleep', ['sleep', '8.{tag}'])\n")},
        # 3. reading the tests back from the working directory or stdin
        "reads_the_tests": {"kind": "code", "tests": ["assert answer() == 4242"], "code": (
            "import os, re, sys\n"
            "def answer():\n"
            "    texts = [sys.stdin.read()]\n"
            "    for name in os.listdir('.'):\n"
            "        try:\n"
            "            texts.append(open(name).read())\n"
            "        except OSError:\n"
            "            pass\n"
            "    found = re.findall(r'== (\\d+)', ' '.join(texts))\n"
            "    return int(found[0]) if found else -1\n")},
        # 4. always-equal objects against assert-style tests, plain and hidden in an int or a list
        "assert_always_equal": {"kind": "code", "tests": ["assert answer() == 42", "assert answer_int() == 42",
                                                          "assert answer_list() == [42]", "assert answer() != 41"],
                                "code": (
            "class Anything:\n"
            "    def __eq__(self, other):\n"
            "        return True\n"
            "    def __ne__(self, other):\n"
            "        return False\n"
            "class AnyInt(int):\n"
            "    __eq__ = Anything.__eq__\n"
            "    __hash__ = int.__hash__\n"
            "def answer():\n"
            "    return Anything()\n"
            "def answer_int():\n"
            "    return AnyInt(0)\n"
            "def answer_list():\n"
            "    return [Anything()]\n")},
        # input/output tests: forged verdicts and always-equal objects have nothing to act on
        "io_forges_a_verdict": {"kind": "code", "tests": [{"input": "2 3\n", "output": "5"}], "code": (
            "import os\n"
            "print('ok 1')\n"
            "os._exit(0)\n")},
        "io_always_equal": {"kind": "code", "tests": [{"input": "2 3\n", "output": [5]}], "code": (
            "class Anything(list):\n"
            "    def __eq__(self, other):\n"
            "        return True\n"
            "print(Anything())\n")},
        "io_honest": {"kind": "code", "tests": [{"input": "2 3\n", "output": "5"},
                                                 {"input": "10 -4\n", "output": "6\n"}], "code": (
            "a, b = map(int, input().split())\n"
            "print(a + b)\n")},
    }


def run_all(home: str, tag: str, port: int) -> dict[str, dict]:
    """Run every case; what each returned (reward or sandbox output), keyed by case name."""
    from posttrain.verifiers.code import run_tests
    from posttrain.verifiers.sandbox import SandboxLimits, run_python

    limits = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512)
    results = {}
    for name, case in cases(home, tag, port).items():
        try:
            if case["kind"] == "sandbox":
                result = run_python(case["code"], limits=limits)
                results[name] = {"stdout": result.stdout, "stderr": result.stderr, "returncode": result.returncode,
                                 "protections": list(result.protections)}
            else:
                report = run_tests(case["code"], case["tests"], limits=limits)
                results[name] = {"passed": list(report.passed), "stdout": report.sandbox.stdout,
                                 "stderr": report.sandbox.stderr, "protections": list(report.sandbox.protections)}
        except Exception as err:  # noqa: BLE001 - recorded: the judging test fails on it, naming the case
            results[name] = {"error": f"{type(err).__name__}: {err}", "protections": []}
    return results


if __name__ == "__main__":
    package_dir, home_dir, run_tag, listener_port = sys.argv[1:5]
    sys.path.insert(0, package_dir)
    print(json.dumps(run_all(home_dir, run_tag, int(listener_port))))
