"""`clusterchat cluster up/down`: N node processes and an nginx in front, on one machine.

Everything goes into one run directory: the nginx.conf used, each process's
log, and ``cluster.json`` recording what was started, so ``down`` stops
exactly that and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusterchat.cluster.nginx import NGINX, nginx_command, standalone_conf

STATE = "cluster.json"

#: Processes this interpreter started; kept so they are reaped, not collected running.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class Proc:
    name: str
    pid: int
    port: int
    log: str


@dataclass
class ClusterState:
    listen: str
    procs: list[Proc] = field(default_factory=list)
    #: nginx's HTTP address for browsers ("" when off).
    web: str = ""


def _exited(proc: subprocess.Popen[bytes], log: Path) -> RuntimeError:
    """A process that ended early, with its log's last line: the reason
    ("redis unavailable: ...") was one `cat` away from the message."""
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    why = f": {lines[-1].strip()[:300]}" if lines else ""
    return RuntimeError(f"{log.name}: exited with {proc.returncode}{why}; see {log}")


def _wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(proc, log)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s; see {log}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _check_node(host: str, port: int, node_id: str, log: Path) -> None:
    """The process answering on ``port`` is the node we started (its PONG
    names it), not some other program that took the port meanwhile."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b'{"msgid":12}\n')
            reply = s.makefile("rb").readline(4096)
        node = json.loads(reply).get("node")
    except (OSError, ValueError, AttributeError) as exc:
        raise RuntimeError(
            f"{host}:{port} does not answer as {node_id} ({exc}); see {log}"
        ) from exc
    if node != node_id:
        raise RuntimeError(f"{host}:{port} answers as {node!r}, not {node_id}: another program?")


def _wait_ready(
    host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Until the node's ``/readyz`` says 200 (store and Redis reachable)."""
    import urllib.error
    import urllib.request

    _wait_port(host, port, proc, log, timeout)
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _exited(proc, log)
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=3) as res:
                if res.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            why = exc.read().decode(errors="replace").strip()
        except OSError as exc:
            why = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: not ready after {timeout}s ({why}); see {log}")


def up(
    run_dir: Path,
    nodes: int,
    listen_port: int,
    base_port: int,
    host: str,
    server_args: list[str],
    nginx: str = NGINX,
    env: dict[str, str] | None = None,
    web_port: int = 0,
    http_base_port: int = 0,
) -> ClusterState:
    """With ``web_port``, node i also serves HTTP on ``http_base_port + i`` and
    nginx proxies browsers (the web client, WebSocket) from ``web_port``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / STATE).exists():
        raise RuntimeError(f"a cluster is already up in {run_dir}; run `clusterchat cluster down`")
    if shutil.which(nginx) is None:
        # Found before anything starts: it was a traceback once the nodes ran.
        raise RuntimeError(
            f"no nginx at {nginx}: install it with its stream module (Debian: apt-get "
            "install nginx libnginx-mod-stream; scripts/services does), or give its path "
            "with --nginx; nothing started"
        )
    # Each port, what uses it, and the option that moves it.
    wanted = [(base_port + i, f"node{i}", "--base-port") for i in range(nodes)]
    wanted.append((listen_port, "nginx", "--listen-port"))
    if web_port:
        wanted += [(http_base_port + i, f"node{i} HTTP", "--http-base-port") for i in range(nodes)]
        wanted.append((web_port, "nginx HTTP", "--web-port"))
    # Every conflict at once: fixing them one per try was a newcomer's loop.
    taken = [(port, what, option) for port, what, option in wanted if not _port_free(host, port)]
    if len(taken) == 1:
        port, what, option = taken[0]
        raise RuntimeError(
            f"port {host}:{port} ({what}) is already in use; nothing started "
            f"(choose another with {option})"
        )
    if taken:
        listed = "; ".join(f"{host}:{port} ({what}, {option})" for port, what, option in taken)
        options = ", ".join(dict.fromkeys(option for _, _, option in taken))
        raise RuntimeError(
            f"{len(taken)} ports are already in use: {listed}; nothing started "
            f"(choose others with {options})"
        )
    state = ClusterState(
        listen=f"{host}:{listen_port}", web=f"{host}:{web_port}" if web_port else ""
    )
    started: list[subprocess.Popen[bytes]] = []
    full_env = {**os.environ, **(env or {})}
    try:
        for i in range(nodes):
            port = base_port + i
            log = run_dir / f"node-{i}.log"
            cmd = [sys.executable, "-m", "clusterchat", "server", "--host", host]
            cmd += ["--port", str(port), "--node-id", f"node{i}"]
            # nginx, on this machine, names each client: a PROXY line (TCP),
            # X-Forwarded-For (HTTP, WebSocket).
            cmd += ["--trusted-proxy", f"{host},127.0.0.1,::1", *server_args]
            if web_port:
                cmd += ["--http-port", str(http_base_port + i)]
            with log.open("ab") as out:
                p = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
                )
            started.append(p)
            state.procs.append(Proc(f"node{i}", p.pid, port, str(log)))
        for i, (p, proc) in enumerate(zip(started, state.procs, strict=True)):
            _wait_port(host, proc.port, p, Path(proc.log), 30)
            _check_node(host, proc.port, f"node{i}", Path(proc.log))
        conf = run_dir / "nginx.conf"
        upstreams = [f"{host}:{p.port}" for p in state.procs]
        web = [f"{host}:{http_base_port + i}" for i in range(nodes)] if web_port else []
        for i, (p, proc) in enumerate(zip(started, state.procs, strict=True)):
            if web_port:
                _wait_ready(host, http_base_port + i, p, Path(proc.log), 30)
        conf.write_text(
            standalone_conf(upstreams, f"{host}:{listen_port}", run_dir, None, None, web, state.web)
        )
        log = run_dir / "nginx-error.log"
        with (run_dir / "nginx.out").open("ab") as out:
            ng = subprocess.Popen(
                nginx_command(conf, run_dir, nginx),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(ng)
        state.procs.append(Proc("nginx", ng.pid, listen_port, str(log)))
        _wait_port(host, listen_port, ng, log, 15)
        if web_port:
            _wait_port(host, web_port, ng, log, 15)
    except BaseException:
        for p in started:
            p.kill()
            p.wait()
        raise
    (run_dir / STATE).write_text(json.dumps(asdict(state), indent=2))
    _children.update((p.pid, p) for p in started)
    return state


def _state(stat_file: Path) -> str | None:
    try:
        return stat_file.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True until every thread is gone: a killed process's leader turns zombie
    while other threads still hold its sockets open."""
    proc = Path(f"/proc/{pid}")
    state = _state(proc / "stat")
    if state is None:
        return False
    if state != "Z":
        return True
    return any(_state(t / "stat") not in (None, "Z") for t in proc.glob("task/*"))


def _same_process(pid: int, name: str) -> bool:
    """Guard against a recycled pid: only signal what looks like ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (b"nginx" in cmdline) if name == "nginx" else (b"clusterchat" in cmdline)


def down(run_dir: Path, timeout: float = 15.0) -> tuple[list[str], list[str]]:
    """Stop the recorded cluster: (what was stopped, what was no longer running)."""
    path = run_dir / STATE
    if not path.exists():
        raise RuntimeError(f"no cluster recorded in {run_dir}")
    raw = json.loads(path.read_text())
    procs = [Proc(**p) for p in raw["procs"]]
    stopped, gone = [], []
    # nginx first, so no new connections reach nodes that are going away.
    for proc in sorted(procs, key=lambda p: p.name != "nginx"):
        if _alive(proc.pid) and _same_process(proc.pid, proc.name):
            os.kill(proc.pid, signal.SIGTERM if proc.name != "nginx" else signal.SIGQUIT)
            deadline = time.monotonic() + timeout
            while _alive(proc.pid) and time.monotonic() < deadline:
                _reap(proc.pid)
                time.sleep(0.05)
            if _alive(proc.pid):
                os.kill(proc.pid, signal.SIGKILL)
            stopped.append(proc.name)
        else:
            gone.append(proc.name)
        _reap(proc.pid)
        if (child := _children.pop(proc.pid, None)) is not None:
            child.wait()
    path.unlink()
    return stopped, gone


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
