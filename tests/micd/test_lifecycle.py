"""The daemon as real processes: start lock, ports.json timing, token, signals, idle timeout, crash safety.

Every daemon here binds 127.0.0.1 only and is stopped by PID at the end of its test.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

MIC = str(Path(sys.executable).parent / "mic")


@dataclass
class Daemon:
    process: subprocess.Popen
    info: dict
    state: Path
    cache: Path

    @property
    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def request(self, method: str, path: str, body: bytes | None = None, token: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.info["http_port"], timeout=30)
        headers = {"Authorization": f"Bearer {token or self.token}"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def daemon_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MIC_STATE_DIR": str(tmp_path / "state"), "MIC_CACHE_DIR": str(tmp_path / "cache"), **extra})
    return env


def read_line(process: subprocess.Popen, timeout: float = 30) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("daemon printed nothing in time")
    return process.stdout.readline().decode()


def start_micd(tmp_path: Path, *args: str, **env: str) -> Daemon:
    process = subprocess.Popen(
        [sys.executable, "-m", "micd.main", "run", "--json", *args],
        env=daemon_env(tmp_path, **env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    line = read_line(process)
    assert line, f"micd exited with {process.wait()}"
    state = Path(env.get("MIC_STATE_DIR", tmp_path / "state"))
    return Daemon(process, json.loads(line), state, tmp_path / "cache")


@pytest.fixture
def micd(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def start(*args: str, **env: str) -> Daemon:
        daemon = start_micd(tmp_path, *args, **env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def mic(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MIC, *args],
        env=daemon_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_concurrent_starts_make_one_daemon(tmp_path):
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: mic(tmp_path, "daemon", "start", "--json"), range(3)))
    try:
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        outputs = [json.loads(r.stdout) for r in results]
        assert len({o["pid"] for o in outputs}) == 1
        assert sorted(o["started"] for o in outputs) == [False, False, True]
        status = mic(tmp_path, "daemon", "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == outputs[0]["pid"]
    finally:
        stopped = mic(tmp_path, "daemon", "stop", "--json")
    assert json.loads(stopped.stdout) == {"stopped": True, "pid": outputs[0]["pid"]}
    assert mic(tmp_path, "daemon", "status").returncode == 1
    assert (
        not (tmp_path / "state" / "ports.json").exists() and not (tmp_path / "state" / "daemon.pid").exists()
    )


def test_ports_json_appears_only_when_both_ports_serve(tmp_path):
    ports = tmp_path / "state" / "ports.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "micd.main", "run"],
        env=daemon_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ports.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.001)
        info = json.loads(ports.read_text())  # atomic: never a partial file
        # every frontend's client configuration was written before ports.json: a reader finds it complete
        env_file = tmp_path / "state" / "env.json"
        env = json.loads(env_file.read_text())["env"]
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and (tmp_path / "state" / "bazelrc").exists()
        assert f"127.0.0.1:{info['http_port']}" in env["TURBO_API"] and env["MIC_BAZELRC"]
        conn = http.client.HTTPConnection("127.0.0.1", info["http_port"], timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        socket.create_connection(("127.0.0.1", info["grpc_port"]), timeout=5).close()
        assert info["pid"] == process.pid
        assert int((tmp_path / "state" / "daemon.pid").read_text()) == process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not ports.exists()
    assert not (tmp_path / "state" / "env.json").exists() and not (tmp_path / "state" / "bazelrc").exists()


def test_token_file_is_private_and_survives_restarts(micd, tmp_path):
    first = micd()
    token_file = first.state / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = first.token
    assert first.stop() == 0
    second = micd()
    assert second.token == token
    assert second.request("GET", "/stats")[0] == 200
    assert second.request("GET", "/stats", token="wrong")[0] == 401
    assert second.stop() == 0
    token_file.chmod(0o644)  # a token others can read is not a secret any more: replaced at start
    third = micd()
    assert third.token != token and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert third.stop() == 0
    third.state.chmod(0o755)  # a state dir others can list: tightened at the next start
    fourth = micd()
    assert stat.S_IMODE(fourth.state.stat().st_mode) == 0o700
    assert fourth.stop() == 0


def test_bazelrc_carries_the_configured_instance_name(micd, tmp_path):
    (tmp_path / "mic.toml").write_text('[tools.bazel]\ninstance_name = "team/main"\n')
    daemon = micd()
    assert "build --remote_instance_name=team/main\n" in (daemon.state / "bazelrc").read_text()
    assert daemon.stop() == 0


def test_second_daemon_for_the_same_state_dir_refuses(micd, tmp_path):
    first = micd()
    second = subprocess.run(
        [sys.executable, "-m", "micd.main", "run"],
        env=daemon_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 3
    assert "already running" in second.stderr and str(first.info["pid"]) in second.stderr
    assert first.request("GET", "/stats")[0] == 200  # the first one is untouched
    assert first.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(micd, sig):
    daemon = micd()
    assert daemon.stop(sig) == 0
    assert not (daemon.state / "ports.json").exists() and not (daemon.state / "daemon.pid").exists()
    assert "stopping: signal" in (daemon.state / "daemon.log").read_text()


def test_idle_timeout_stops_the_daemon(micd):
    daemon = micd("--idle-timeout", "1.5")
    for _ in range(4):  # requests keep it alive past the timeout
        time.sleep(0.5)
        assert daemon.request("GET", "/stats")[0] == 200
    last_request = time.monotonic()  # after the response: the daemon's idle time started before this
    assert daemon.process.poll() is None
    assert daemon.process.wait(15) == 0
    assert 1.0 <= time.monotonic() - last_request < 15
    assert "stopping: idle for 1.5s" in (daemon.state / "daemon.log").read_text()
    assert not (daemon.state / "ports.json").exists()


def test_stale_files_after_kill_9_do_not_fool_clients(micd, tmp_path):
    daemon = micd()
    daemon.stop(signal.SIGKILL)
    assert (daemon.state / "ports.json").exists()  # left behind by the crash
    assert (daemon.state / "env.json").exists()
    assert mic(tmp_path, "daemon", "status").returncode == 1
    started = mic(tmp_path, "daemon", "start", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["started"] and info["pid"] != daemon.info["pid"]
    finally:
        assert mic(tmp_path, "daemon", "stop").returncode == 0


def test_unauthenticated_requests_do_not_keep_the_daemon_alive(micd):
    daemon = micd("--idle-timeout", "1.5")
    port = daemon.info["http_port"]
    deadline = time.monotonic() + 15
    while daemon.process.poll() is None and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/stats")  # no token: 401, and no activity
            assert connection.getresponse().status == 401
        except OSError:
            break  # the daemon stopped listening between the poll and the request: it is shutting down
        finally:
            connection.close()
        time.sleep(0.2)
    assert time.monotonic() < deadline, "401s kept the daemon alive"
    assert daemon.process.wait(30) == 0
    assert "stopping: idle for 1.5s" in (daemon.state / "daemon.log").read_text()


@pytest.mark.parametrize("stale", ["daemon.pid", "ports.json"])
def test_stop_never_signals_a_process_named_only_by_stale_files(tmp_path, stale):
    """A daemon killed by SIGKILL or the OOM killer leaves its files behind, and its pid may be reused by any
    program: `mic daemon stop` must not signal that program."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        if stale == "daemon.pid":
            (state / "daemon.pid").write_text(f"{bystander.pid}\n")
        else:
            ports = {"pid": bystander.pid, "http": "http://127.0.0.1:1", "grpc": "grpc://127.0.0.1:2"}
            (state / "ports.json").write_text(
                json.dumps({**ports, "http_port": 1, "grpc_port": 2, "started_at": 0})
            )
        result = mic(tmp_path, "daemon", "stop", "--json", timeout=30)
        assert result.returncode == 0 and json.loads(result.stdout)["stopped"] is False
        time.sleep(0.2)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_start_while_the_previous_daemon_shuts_down_starts_a_new_one(tmp_path):
    """The old daemon removed ports.json but still holds its lock (finishing an upload in its grace period):
    a start then must wait for it to go and start a new daemon, not time out."""
    first = start_micd(tmp_path)
    sock = socket.create_connection(("127.0.0.1", first.info["http_port"]))
    try:
        head = f"PUT /cas/sha256/{'a' * 64}/1000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first.token}\r\n"
        sock.sendall(f"{head}Content-Length: 1000000\r\n\r\n".encode() + b"x" * 1000)  # in flight
        time.sleep(0.3)
        first.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while (first.state / "ports.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.process.poll() is None  # shutting down, lock held
        started = mic(tmp_path, "daemon", "start", "--json", "--timeout", "20", timeout=60)
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert info["started"] and info["pid"] != first.process.pid
        assert first.process.poll() is not None
    finally:
        sock.close()
        if first.process.poll() is None:
            first.process.kill()
        first.process.wait()
        mic(tmp_path, "daemon", "stop", timeout=60)


def test_an_http_proxy_setting_is_bypassed_and_never_sees_the_token(tmp_path):
    """Clients reach 127.0.0.1 directly: an unreachable proxy must not break start/status/stats, and a
    reachable one must not receive the session token."""
    seen: list[bytes] = []
    proxy = socket.create_server(("127.0.0.1", 0))
    proxy.settimeout(0.2)

    def record_and_close() -> None:
        with contextlib.suppress(OSError):
            while True:
                with contextlib.suppress(TimeoutError):
                    connection, _ = proxy.accept()
                    seen.append(connection.recv(65536))
                    connection.close()

    threading.Thread(target=record_and_close, daemon=True).start()
    env = {"http_proxy": f"http://127.0.0.1:{proxy.getsockname()[1]}", "no_proxy": "", "NO_PROXY": ""}
    try:
        started = mic(tmp_path, "daemon", "start", "--json", "--timeout", "15", timeout=60, **env)
        assert started.returncode == 0, started.stderr
        assert mic(tmp_path, "daemon", "status", timeout=30, **env).returncode == 0
        assert mic(tmp_path, "stats", "--json", timeout=30, **env).returncode == 0
        assert seen == []
    finally:
        proxy.close()
        mic(tmp_path, "daemon", "stop", timeout=60)


def test_non_utf8_config_file_is_a_clear_error(tmp_path):
    (tmp_path / "mic.toml").write_bytes(b'[daemon]\nlog_level = "INFO" # caf\xe9\n')
    shown = mic(tmp_path, "config", "show", timeout=30)
    assert shown.returncode != 0 and "Traceback" not in shown.stderr and "mic.toml" in shown.stderr
    run = subprocess.run(
        [sys.executable, "-m", "micd.main", "run"], env=daemon_env(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr and "mic.toml" in run.stderr


def test_non_utf8_authorization_header_is_401(micd):
    daemon = micd()
    for path in ("/stats", "/metrics", f"/cas/sha256/{'a' * 64}/1"):
        with socket.create_connection(("127.0.0.1", daemon.info["http_port"]), timeout=10) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
            sock.sendall(request + b"Authorization: Bearer \xff\xfe\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.split(b"\r\n", 1)[0].split()[1] == b"401", path
    assert "Traceback" not in (daemon.state / "daemon.log").read_text()


def _big_blob(mib: int) -> tuple[bytes, str]:
    block = os.urandom(1 << 20)
    hasher = hashlib.sha256()
    for _ in range(mib):
        hasher.update(block)
    return block, hasher.hexdigest()


def _cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())


def test_kill_9_during_a_large_put_leaves_no_partial_blob(micd):
    mib = 200
    block, hex_ = _big_blob(mib)
    daemon = micd()
    path = f"/cas/sha256/{hex_}/{mib << 20}"
    conn = http.client.HTTPConnection("127.0.0.1", daemon.info["http_port"], timeout=30)
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", f"Bearer {daemon.token}")
    conn.putheader("Content-Length", str(mib << 20))
    conn.endheaders()
    for _ in range(80):  # 80 of 200 MiB, then the daemon dies mid-upload
        conn.send(block)
    daemon.stop(signal.SIGKILL)
    with pytest.raises(OSError):
        for _ in range(mib):
            conn.send(block)
        conn.getresponse()
    conn.close()

    restarted = micd()
    assert restarted.request("HEAD", path)[0] == 404
    assert restarted.request("GET", path)[0] == 404
    assert _cache_bytes(restarted.cache) < 1 << 20  # the 80 MiB written before the crash are gone
    # and the same upload now completes normally
    conn = http.client.HTTPConnection("127.0.0.1", restarted.info["http_port"], timeout=60)
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", f"Bearer {restarted.token}")
    conn.putheader("Content-Length", str(mib << 20))
    conn.endheaders()
    for _ in range(mib):
        conn.send(block)
    assert conn.getresponse().status == 201
    assert restarted.request("HEAD", path)[0] == 200
    assert restarted.stop() == 0


def test_hard_cap_rejects_with_507_and_keeps_existing_blobs(micd):
    daemon = micd("--disk-soft-cap", "1MiB", "--disk-hard-cap", "2MiB")
    small = [os.urandom(100_000) for _ in range(5)]
    for data in small:
        status, _ = daemon.request("PUT", f"/cas/sha256/{hashlib.sha256(data).hexdigest()}/{len(data)}", data)
        assert status == 201
    big = os.urandom(3 << 20)
    status, body = daemon.request("PUT", f"/cas/sha256/{hashlib.sha256(big).hexdigest()}/{len(big)}", big)
    assert status == 507 and b"hard cap" in body
    assert daemon.request("HEAD", f"/cas/sha256/{hashlib.sha256(big).hexdigest()}/{len(big)}")[0] == 404
    for data in small:
        status, got = daemon.request("GET", f"/cas/sha256/{hashlib.sha256(data).hexdigest()}/{len(data)}")
        assert status == 200 and got == data
    assert daemon.stop() == 0


def _s3_keys(endpoint_url: str, bucket: str) -> set[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def _put_blobs(daemon: Daemon, count: int) -> list[str]:
    hexes = []
    for _ in range(count):
        data = os.urandom(50_000)
        hex_ = hashlib.sha256(data).hexdigest()
        assert daemon.request("PUT", f"/cas/sha256/{hex_}/{len(data)}", data)[0] == 201
        hexes.append(hex_)
    return hexes


def _queue_depth(daemon: Daemon) -> int:
    status, body = daemon.request("GET", "/stats")
    assert status == 200
    return json.loads(body)["store"]["upload_queue"]["depth"]


def test_sigterm_drains_the_upload_queue(micd, s3_server, s3_proxy, s3_env):
    bucket = s3_server.create_bucket()
    daemon = micd("--s3-bucket", bucket, "--s3-endpoint-url", s3_proxy.endpoint_url, "--drain-timeout", "60")
    s3_proxy.cut()  # S3 down: uploads pile up in the queue while clients keep succeeding locally
    hexes = _put_blobs(daemon, 20)
    assert _queue_depth(daemon) == 20
    status, metrics = daemon.request("GET", "/metrics")
    assert status == 200 and "micd_upload_queue_depth 20" in metrics.decode()
    s3_proxy.restore()
    assert daemon.stop(timeout=90) == 0  # SIGTERM: drain first, then exit 0
    keys = _s3_keys(s3_server.endpoint_url, bucket)
    assert {k.rsplit("/", 1)[1].split(".")[0] for k in keys if "/cas/" in f"/{k}"} >= set(hexes)
    assert _journaled(daemon) == []


def _journaled(daemon: Daemon) -> list[Path]:
    """Pending upload entries in the shared cache root's journal (all destinations)."""
    return [p for p in (daemon.cache / "v1" / "s3-queue").glob("*/*") if not p.name.endswith(".tmp")]


def test_drain_is_bounded_and_pending_uploads_survive_the_restart(
    micd, s3_server, s3_proxy, s3_env, tmp_path
):
    """What a stopped session could not upload is delivered by the next daemon of ANY session of the user."""
    bucket = s3_server.create_bucket()
    args = ("--s3-bucket", bucket, "--s3-endpoint-url", s3_proxy.endpoint_url, "--drain-timeout", "2")
    daemon = micd(*args)
    s3_proxy.cut()
    hexes = _put_blobs(daemon, 10)
    started = time.monotonic()
    assert daemon.stop(timeout=60) == 0
    assert time.monotonic() - started < 2 + 5 + 5  # drain bound + HTTP/gRPC grace + slack
    assert len(_journaled(daemon)) == 10  # journaled, not lost
    assert _s3_keys(s3_server.endpoint_url, bucket) == set()

    s3_proxy.restore()
    again = micd(*args, MIC_STATE_DIR=str(tmp_path / "another-session"))
    deadline = time.monotonic() + 60
    while _queue_depth(again) and time.monotonic() < deadline:
        time.sleep(0.2)
    keys = {k.rsplit("/", 1)[1].split(".")[0] for k in _s3_keys(s3_server.endpoint_url, bucket)}
    assert keys >= set(hexes)
    assert _journaled(again) == []
    assert again.stop() == 0


def test_idle_trim_hands_memory_back_once_per_pause():
    from micd.app import Activity
    from micd.lifecycle import IDLE_TRIM_AFTER, IdleTrim

    activity, calls = Activity(), []
    trim = IdleTrim(activity, trim=lambda pad: calls.append(pad) or 1)
    trim.tick()
    assert calls == []  # nothing happened since start: nothing to give back
    activity.touch()
    activity.last -= IDLE_TRIM_AFTER + 0.1  # a request ended a while ago
    trim.tick()
    trim.tick()
    assert calls == [0]  # once per idle period, not once per tick
    activity.in_flight = 1
    activity.touch()
    trim.tick()
    assert calls == [0]  # a request in flight is not idleness
    activity.in_flight = 0
    trim.tick()
    assert calls == [0]  # just ended: not idle long enough yet
    activity.last -= IDLE_TRIM_AFTER + 0.1
    trim.tick()
    assert calls == [0, 0]


def test_the_real_malloc_trim_is_found_on_this_libc():
    from micd import libc

    assert libc.malloc_trim is not None and libc.malloc_trim(0) in (0, 1)


def _run_per_mode(script: str, modes: tuple[str, ...]) -> dict[str, int]:
    """Run `script` in a fresh interpreter once per mode (its argv[1]); the integer each run printed."""
    printed = {}
    for mode in modes:
        out = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        printed[mode] = int(out.stdout)
    return printed


def test_freed_transfer_buffers_are_reused_not_faulted_in_again():
    """With `keep_freed_heap`, MiB-sized buffers freed by one transfer are reused by the next: the process
    takes (almost) no new page faults for them. Without it glibc unmaps them and every buffer is faulted
    in again (the cost that made a 64 MiB page-cache read 7x slower on the dev VM). Counts page faults, not
    time, so a loaded machine cannot make it flaky."""
    script = (
        "import resource, sys\n"
        "from micd.lifecycle import keep_freed_heap\n"
        "if sys.argv[1] == 'tuned': assert keep_freed_heap()\n"
        "def transfer(): return [b'x' * (1 << 20) for _ in range(8)]\n"
        "transfer()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): transfer()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = _run_per_mode(script, ("default", "tuned"))
    pages = 20 * 8 * (1 << 20) // 4096
    assert faults["tuned"] < pages // 20, faults
    assert faults["default"] > pages // 2, faults  # the default really does fault them in again


def test_worker_threads_share_the_kept_heap():
    """Eight worker threads taking turns with 16 MiB of transfer buffers each. Kept heap is per arena and glibc
    gives each thread its own (up to 8 per core): with freed buffers kept, ~8 x 16 MiB stays held. With the
    arenas capped by `keep_freed_heap`, the threads reuse one pool. Measures RSS growth (bytes, not time)."""
    script = (
        "import sys, threading, psutil\n"
        "from micd import libc\n"
        "from micd.lifecycle import keep_freed_heap\n"
        "assert keep_freed_heap()\n"
        "if sys.argv[1] == 'per-thread': assert libc.mallopt(libc.M_ARENA_MAX, 64)\n"
        "turn, started, done = threading.Lock(), threading.Barrier(9), threading.Event()\n"
        "turns = threading.Semaphore(0)\n"
        "def work():\n"
        "    started.wait()\n"
        "    with turn:\n"
        "        bufs = [bytearray(1 << 20) for _ in range(16)]\n"
        "        del bufs\n"
        "    turns.release()\n"
        "    done.wait()\n"
        "threads = [threading.Thread(target=work) for _ in range(8)]\n"
        "before = psutil.Process().memory_info().rss\n"
        "for t in threads: t.start()\n"
        "started.wait()\n"
        "for _ in threads: turns.acquire()\n"
        "grown = psutil.Process().memory_info().rss - before\n"
        "print(grown >> 20)\n"
        "done.set()\n"
        "for t in threads: t.join()\n"
    )
    grown = _run_per_mode(script, ("per-thread", "tuned"))
    assert grown["per-thread"] > 6 * 16, grown  # an arena per thread really keeps a pool per thread
    assert grown["tuned"] < 3 * 16, grown
