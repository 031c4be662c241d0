"""A real two-node Ray cluster on this machine, with token authentication, for the tests.

Each node is `ray start --block` in its own session (its own temp dir and ports, from 27000-27999),
with a throwaway token and HOME, so the user's ~/.ray is never read or written. Teardown signals
exactly this cluster's processes: SIGTERM to each `ray start --block` (Ray's own ordered shutdown),
then SIGKILL of whatever is left in their process groups or carries this cluster's private folder in
its environment. Never `ray stop`, which would stop every Ray on the machine.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

RAY_BIN = os.environ.get("RAY_BIN", str(Path(sys.executable).with_name("ray")))

# Offsets inside a port block. Head gets block+0..19, worker block+20..39,
# worker processes get their own ranges above that.
_HEAD = dict(port=0, node_manager=1, object_manager=2, dashboard=3,
             dashboard_agent_listen=4, dashboard_agent_grpc=5,
             runtime_env_agent=6, metrics_export=7, ray_client_server=8)
_WORKER = dict(node_manager=21, object_manager=22, dashboard_agent_listen=24,
               dashboard_agent_grpc=25, runtime_env_agent=26, metrics_export=27)
# a node added mid-job (after the worker node is lost: it takes that node's range of worker ports)
_LATE = dict(node_manager=31, object_manager=32, dashboard_agent_listen=34,
             dashboard_agent_grpc=35, runtime_env_agent=36, metrics_export=37)
_BLOCK = 40          # fixed ports
NODE_ENV = "TSD_TEST_RAY_NODE"   # which node of the test cluster a process belongs to
_WORKER_PORTS = 30   # per node, for ray worker processes (min..max worker port)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def find_port_block(lo: int = 27000, hi: int = 27999) -> int:
    span = _BLOCK + 2 * _WORKER_PORTS
    for base in range(lo, hi - span, span):
        if all(_port_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError(f"no free block of {span} ports in {lo}-{hi}")


class TwoNodeCluster:
    def __init__(self, base_dir: Optional[str] = None, base_port: Optional[int] = None,
                 cpus_per_node: int = 1, start_timeout_s: float = 90.0,
                 keep_dir: bool = False, extra_env: Optional[Dict[str, str]] = None,
                 include_dashboard: bool = False):
        self._own_dir = base_dir is None
        # Keep this SHORT: Ray puts unix sockets at
        # <temp-dir>/session_YYYY-MM-DD_HH-MM-SS_ffffff_PID/sockets/plasma_store
        # and AF_UNIX paths are limited to ~107 bytes.
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="r2n", dir="/tmp"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base_port = base_port if base_port is not None else find_port_block()
        self.cpus = cpus_per_node
        self.start_timeout_s = start_timeout_s
        self.keep_dir = keep_dir
        self.include_dashboard = include_dashboard
        self.extra_env = dict(extra_env or {})
        self.procs: List[subprocess.Popen] = []
        self.nodes: Dict[str, subprocess.Popen] = {}
        self.timings: Dict[str, float] = {}

    # ---- addresses / env -------------------------------------------------
    def p(self, off: int) -> int:
        return self.base_port + off

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.p(_HEAD['port'])}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.p(_HEAD['dashboard'])}"

    @property
    def token_path(self) -> Path:
        return self.base / "token"

    @property
    def driver_env(self) -> Dict[str, str]:
        """Env a driver (or `ray job submit`) needs to talk to this cluster."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "HOME": str(self.base / "home"),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _node_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_AUTH_TOKEN", None)   # RAY_AUTH_TOKEN would win over the path
        env.pop("RAY_ADDRESS", None)
        env.update(self.driver_env)
        # SIGTERM on `ray start --block` would otherwise drain for up to 30 s.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        env.update(self.extra_env)
        return env

    # ---- start -----------------------------------------------------------
    def _common(self, temp: str, ports: Dict[str, int], wp_lo: int) -> List[str]:
        return [
            "--node-ip-address", "127.0.0.1",   # Ray rewrites this to the routable IP
            "--num-cpus", str(self.cpus),
            "--temp-dir", str(self.base / temp),
            "--node-manager-port", str(self.p(ports["node_manager"])),
            "--object-manager-port", str(self.p(ports["object_manager"])),
            "--dashboard-agent-listen-port", str(self.p(ports["dashboard_agent_listen"])),
            "--dashboard-agent-grpc-port", str(self.p(ports["dashboard_agent_grpc"])),
            "--runtime-env-agent-port", str(self.p(ports["runtime_env_agent"])),
            "--metrics-export-port", str(self.p(ports["metrics_export"])),
            "--min-worker-port", str(wp_lo),
            "--max-worker-port", str(wp_lo + _WORKER_PORTS - 1),
            "--disable-usage-stats", "--block",
        ]

    def _spawn(self, name: str, args: List[str]) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "wb")
        # every process of the node (its raylet, and the workers the raylet starts) inherits the name
        env = {**self._node_env(), NODE_ENV: name}
        proc = subprocess.Popen([RAY_BIN, "start", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=str(self.base))
        log.close()
        self.procs.append(proc)
        self.nodes[name] = proc
        return proc

    def _wait_started(self, name: str, proc: subprocess.Popen) -> None:
        log = self.base / f"{name}.log"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Ray runtime started." in text:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` for {name} exited {proc.returncode}:\n"
                                   + text[-3000:])
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not start in {self.start_timeout_s}s; see {log}")

    def start(self) -> "TwoNodeCluster":
        (self.base / "home").mkdir(exist_ok=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        wp = self.base_port + _BLOCK
        t0 = time.monotonic()
        head = self._spawn("head", [
            "--head", "--port", str(self.p(_HEAD["port"])),
            "--include-dashboard", "true" if self.include_dashboard else "false",
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.p(_HEAD["dashboard"])),
            "--ray-client-server-port", str(self.p(_HEAD["ray_client_server"])),
            "--resources", '{"node_a": 1}',
            *self._common("h", _HEAD, wp)])
        try:
            self._wait_started("head", head)
            self.timings["head_s"] = time.monotonic() - t0
            t1 = time.monotonic()
            worker = self._spawn("worker", [
                "--address", self.address, "--resources", '{"node_b": 1}',
                *self._common("w", _WORKER, wp + _WORKER_PORTS)])
            self._wait_started("worker", worker)
            self.timings["worker_s"] = time.monotonic() - t1
        except BaseException:
            self.stop()
            raise
        return self

    # ---- nodes coming and going mid-job ------------------------------------
    def kill_node(self, name: str = "worker") -> List[int]:
        """Lose a node as a machine is lost: SIGKILL every process of node `name` at once (its
        `ray start`, raylet and agents, and the Ray workers it started), nothing said to the GCS.
        Returns the PIDs killed."""
        proc = self.nodes[name]
        tag = f"{NODE_ENV}={name}".encode()
        victims = [pid for pid in self._our_stragglers() if tag in _environ(pid).split(b"\0")]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return victims

    def add_node(self, name: str) -> None:
        """Join one more worker node (it takes the worker node's worker ports: after `kill_node('worker')`)."""
        wp = self.base_port + _BLOCK + _WORKER_PORTS
        proc = self._spawn(name, ["--address", self.address, "--resources", f'{{"{name}": 1}}',
                                  *self._common(name[:2], _LATE, wp)])
        self._wait_started(name, proc)

    # ---- stop ------------------------------------------------------------
    def _our_stragglers(self) -> List[int]:
        """PIDs of live processes that belong to this cluster only."""
        pgids = {p.pid for p in self.procs}
        marker = str(self.base).encode()
        me = os.getpid()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[0] == b"Z":
                    continue
                pgid = int(fields[2])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
                # Ray rewrites worker/agent titles ("ray::IDLE") and workers get their
                # own process group, but they inherit our env (RAY_AUTH_TOKEN_PATH=<base>/token).
                with open(f"/proc/{d}/environ", "rb") as f:
                    environ = f.read()
            except (OSError, IndexError, ValueError):
                continue
            if pgid in pgids or marker in cmd or marker in environ:
                found.append(int(d))
        return found

    def stop(self, timeout_s: float = 20.0) -> None:
        t0 = time.monotonic()
        for proc in reversed(self.procs):          # worker node first, then head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)   # ray's ordered graceful shutdown
                try:
                    proc.wait(timeout=timeout_s / 2)
                except subprocess.TimeoutExpired:
                    pass
        self.exit_codes = [proc.poll() for proc in self.procs]  # None = needed SIGKILL
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = self._our_stragglers()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.timings["stop_s"] = time.monotonic() - t0
        self.leftover_pids = self._our_stragglers()
        if self._own_dir and not self.keep_dir and not self.leftover_pids:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "TwoNodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
