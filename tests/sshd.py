"""A real sshd on 127.0.0.1 for the remote-pool tests, and a remote user with bgtask.

:func:`start` needs root (it creates the user ``bgtremote`` if absent and runs
/usr/sbin/sshd); it returns a :class:`Server` whose :meth:`Server.env` points the
library at a client config (``$BGTASK_SSH_CONFIG``), a throwaway known_hosts and key,
and a runtime directory of its own (``$BGTASK_SSH_DIR``). The remote user's interpreter
is a venv made from /usr/bin/python3 (root's interpreter lives under a 0700 home) whose
``.pth`` file makes a fresh copy of this checkout's bgtask, dill, filelock and wcwidth
importable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

USER = "bgtremote"
SSHD = "/usr/sbin/sshd"
REMOTE_PYTHON_BASE = "/usr/bin/python3"
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available() -> str | None:
    """Why the ssh tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (creates a user and runs sshd)"
    for exe in (SSHD, REMOTE_PYTHON_BASE, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not exe or not os.path.exists(exe):
            return f"missing {exe or 'ssh client'}"
    return None


@dataclass
class Server:
    port: int
    tmp: str
    proc: subprocess.Popen[bytes]
    config: str
    python: str
    home: str
    extra_procs: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ssh://{USER}@127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"BGTASK_SSH_CONFIG": self.config, "BGTASK_SSH_DIR": os.path.join(self.tmp, "run")}

    def master_pids(self) -> list[int]:
        """ssh masters started with our config (ours only: matched by the config path)."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if self.config.encode() in argv and b"ControlMaster=yes" in argv:
                out.append(int(d))
        return out

    def stop(self) -> None:
        for pid in self.master_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        _run("useradd", "-m", "-s", "/bin/sh", USER)
        # "*": no password, but not locked ("!"): sshd refuses any login to a locked
        # account when it does not use PAM.
        _run("usermod", "-p", "*", USER)
        return pwd.getpwnam(USER)


def _install_remote_python(pw: pwd.struct_passwd) -> str:
    """A venv of the remote user with this checkout's bgtask importable; its python."""
    home = pw.pw_dir
    venv = os.path.join(home, "venv")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        _run(REMOTE_PYTHON_BASE, "-m", "venv", "--without-pip", venv)
    lib = os.path.join(home, "lib")
    shutil.rmtree(lib, ignore_errors=True)
    os.makedirs(lib)
    shutil.copytree(os.path.join(_HERE, "bgtask"), os.path.join(lib, "bgtask"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for mod in ("dill", "filelock", "wcwidth"):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.submodule_search_locations
        src = list(spec.submodule_search_locations)[0]
        shutil.copytree(src, os.path.join(lib, mod), ignore=shutil.ignore_patterns("__pycache__"))
    site = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                           "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "bgtask-tests.pth"), "w") as f:
        f.write(lib + "\n")
    _run("chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", venv, lib)
    return os.path.join(venv, "bin", "python")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start() -> Server:
    pw = _ensure_user()
    python = _install_remote_python(pw)
    tmp = tempfile.mkdtemp(prefix="bgtsshd")
    os.chmod(tmp, 0o700)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/host_key")
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/client_key")
    ssh_dir = os.path.join(pw.pw_dir, ".ssh")
    os.makedirs(ssh_dir, exist_ok=True)
    shutil.copy(f"{tmp}/client_key.pub", f"{ssh_dir}/authorized_keys")
    _run("chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", ssh_dir)
    os.chmod(ssh_dir, 0o700)
    os.chmod(f"{ssh_dir}/authorized_keys", 0o600)
    port = _free_port()
    with open(f"{tmp}/sshd_config", "w") as f:
        f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp}/host_key\n"
                f"PidFile {tmp}/sshd.pid\nAllowUsers {USER}\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\n"
                "LogLevel ERROR\n")
    with open(f"{tmp}/host_key.pub") as f:
        hostkey = " ".join(f.read().split()[:2])
    with open(f"{tmp}/known_hosts", "w") as f:
        f.write(f"[127.0.0.1]:{port} {hostkey}\n")
    config = f"{tmp}/ssh_config"
    with open(config, "w") as f:
        f.write(f"Host *\n  IdentityFile {tmp}/client_key\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {tmp}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
    with open(f"{tmp}/sshd.log", "wb") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", f"{tmp}/sshd_config"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(f"{tmp}/sshd.log") as f:
                raise RuntimeError(f"sshd did not start: {f.read()}")
        time.sleep(0.02)
    return Server(port, tmp, proc, config, python, pw.pw_dir)
