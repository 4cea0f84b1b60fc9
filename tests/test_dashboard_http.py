"""The dashboard's HTTP side ([http] listen, docs/dashboard.md): access control, the JSON API, the event
stream, the series, /metrics, the token file and `coordctl dashboard`, against a real daemon."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, wait_until, write_config
from test_metrics import block_inbox, samples, value

from coordctl import protocol as p
from coordd import config
from coordd.model import Record
from coordd.series import Series

HTTP = {"listen": "127.0.0.1:0"}
FAST = {"max_attempts": 1, "backoff_initial_ms": 20, "backoff_max_ms": 20}
PATHS = ["/", "/static/app.js", "/static/style.css", "/metrics", "/api/series", "/api/events", "/no-such-path"]


class Dash:
    """A daemon's dashboard, as a client reaches it: its address, its token, and raw HTTP requests."""

    def __init__(self, d: Daemon) -> None:
        with d.client() as c:
            url = c.status().http_url
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/"), url
        self.port = int(url.rstrip("/").rsplit(":", 1)[1])
        self.host = f"127.0.0.1:{self.port}"
        self.token_file = Path(d.socket + ".http-token")
        self.token = self.token_file.read_text().strip()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, host: str | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host or self.host)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request("GET", path, headers={"X-Coordd-Token": self.token}, **kw)

    def call(self, req: dict) -> dict:
        """POST /api/call with the token header: the protocol's reply, as JSON."""
        status, headers, body = self.request(
            "POST", "/api/call", json.dumps(req).encode(), {"X-Coordd-Token": self.token}
        )
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/json")
        assert headers["Cache-Control"] == "no-store"
        return json.loads(body)

    def message_status(self, message_id: int) -> str:
        return self.call({"op": "get", "message_id": message_id})["message"]["status"]


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


@pytest.fixture
def dash(make_daemon) -> tuple[Daemon, Dash]:
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}, {"id": "Bad"}], http=HTTP, delivery=FAST, start=False)
    block_inbox(d, "Bad")
    d.start()
    return d, Dash(d)


def test_every_path_needs_the_token_and_this_hosts_name(dash):
    _, h = dash
    for path in PATHS:
        for headers in ({}, {"X-Coordd-Token": "wrong"}, {"Cookie": "coordd_token=wrong"}):
            status, _, body = h.request("GET", path, headers=headers)
            assert (status, error_code(body)) == (401, "unauthorized"), (path, headers)
        status, _, body = h.request("GET", path, headers={"X-Coordd-Token": h.token}, host="evil.example:80")
        assert (status, error_code(body)) == (403, "bad_host"), path
        status, _, body = h.request("GET", path, host=f"attacker.example:{h.port}")  # DNS rebinding
        assert (status, error_code(body)) == (403, "bad_host"), path
    status, _, body = h.request("POST", "/api/call", b'{"op": "ping"}')
    assert (status, error_code(body)) == (401, "unauthorized")
    status, _, body = h.request("GET", f"/api/series?token={h.token}")  # the query token is for / only
    assert status == 401
    for host in (f"localhost:{h.port}", f"LOCALHOST:{h.port}", f"[::1]:{h.port}"):
        assert h.get("/api/series", host=host)[0] == 200, host
    status, _, body = h.get("/no-such-path")
    assert (status, error_code(body)) == (404, "not_found")
    status, _, body = h.get("/static/../pyproject.toml")
    assert status == 404


def test_the_url_token_becomes_a_strict_cookie_and_a_post_needs_the_header(dash):
    _, h = dash
    assert h.request("GET", "/?token=wrong")[0] == 401
    status, headers, _ = h.request("GET", f"/?token={h.token}")
    assert (status, headers["Location"]) == (303, "/")
    cookie = headers["Set-Cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert cookie.startswith(f"coordd_token={h.token};") and {"httponly", "path"} <= attributes, cookie
    assert "samesite=strict" in cookie.lower().replace(" ", "")
    with_cookie = {"Cookie": f"coordd_token={h.token}"}

    status, headers, body = h.request("GET", "/", headers=with_cookie)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert f'<meta name="coordd-token" content="{h.token}">' in body.decode()
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, headers, body = h.request("GET", "/static/app.js", headers=with_cookie)
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert h.request("GET", "/api/series", headers=with_cookie)[0] == 200

    ping = b'{"op": "ping"}'
    status, _, body = h.request("POST", "/api/call", ping, headers=with_cookie)  # a cookie alone: a forged POST
    assert (status, error_code(body)) == (401, "unauthorized")
    status, _, body = h.request("POST", "/api/call", ping, headers={**with_cookie, "X-Coordd-Token": h.token})
    assert (status, json.loads(body)["type"]) == (200, "pong")


def test_api_call_answers_through_the_protocols_handlers(dash):
    d, h = dash
    sent = h.call({"op": "send", "to": "A", "body": "from the dashboard", "sender": "operator"})
    assert sent["type"] == "sent"
    with d.client() as c:  # the same daemon, the same store: the socket sees what HTTP sent
        wait_until(lambda: c.get(sent["id"]).message.status == "delivered", what="the message to be delivered")
    got = h.call({"op": "get", "message_id": sent["id"]})
    assert got["type"] == "message" and len(got["attempts"]) == 1
    assert (got["message"]["body"], got["message"]["sender"]) == ("from the dashboard", "operator")
    status = h.call({"op": "status"})
    assert status["type"] == "status" and status["http_url"] == f"http://{h.host}/"
    assert [a["id"] for a in status["agents"]] == ["A", "B", "Bad"]
    page = h.call({"op": "history", "agent": "A"})
    assert [m["id"] for m in page["messages"]] == [sent["id"]]

    # A refusal is the protocol's error reply (HTTP 200), with its stable code.
    refused = h.call({"op": "send", "to": "Nobody", "body": "x", "rid": 7})
    assert (refused["type"], refused["code"], refused["rid"]) == ("error", "unknown_agent", 7)
    assert h.call({"op": "watch"})["code"] == "bad_request"  # streams are /api/events
    # Undecodable JSON is the HTTP-level error.
    for body in (b"{not json", b'{"op": "no_such_op"}', b'{"op": "send", "to": "A"}', b"[" * 100_000):
        status, _, reply = h.request("POST", "/api/call", body, {"X-Coordd-Token": h.token})
        assert (status, error_code(reply)) == (400, "bad_request"), body[:30]
    status, _, reply = h.request("POST", "/api/call", b" " * (1 << 20) + b"{}", {"X-Coordd-Token": h.token})
    assert (status, error_code(reply)) == (413, "too_large")  # daemon.max_frame_bytes, as on the socket

    # A failed message's Retry queues it again: once its inbox works, it is delivered.
    failed = h.call({"op": "send", "to": "Bad", "body": "fails once"})["id"]
    wait_until(lambda: h.message_status(failed) == "failed", what="the failure")
    d.inbox("Bad").unlink()
    retried = h.call({"op": "retry", "message_id": failed})
    assert (retried["type"], retried["id"], retried.get("status", "queued")) == ("sent", failed, "queued")
    wait_until(lambda: h.message_status(failed) == "delivered", what="the retry")
    again = h.call({"op": "retry", "message_id": failed})
    assert (again["type"], again["code"]) == ("error", "bad_state")

    status, headers, text = h.request("GET", "/metrics", headers={"Authorization": f"Bearer {h.token}"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(text.decode())  # the same registry as [metrics], and HTTP calls counted as socket ones
    assert value(found, "coordd_requests_rejected_total", code="unknown_agent") == 1
    assert value(found, "coordd_messages_delivered_total", agent="A", transport="inbox") == 1


def sse_events(h: Dash, query: str = "") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    conn.request("GET", f"/api/events{query}", headers={"X-Coordd-Token": h.token})
    r = conn.getresponse()
    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream", r.read()
    return conn, r


def read_events(r: http.client.HTTPResponse, until, deadline_s: float = 5.0) -> list[dict]:
    """The stream's events (its `data:` lines, decoded) until `until(events)` holds; fails past the deadline."""
    events: list[dict] = []
    deadline = time.monotonic() + deadline_s
    while not until(events):
        assert time.monotonic() < deadline, f"only these events came: {events}"
        line = r.readline()
        assert line, f"the stream ended; events: {events}"
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    return events


def test_the_event_stream_carries_a_sent_messages_events_as_they_happen(dash):
    d, h = dash
    conn, r = sse_events(h, "?agent=A")
    try:
        with d.client() as c:
            other = c.send("B", "not for this stream")
            mid = c.send("A", "watched\nsecond line", sender="Agent-2")
        events = read_events(r, lambda evs: any(e["event"] == "delivered" and e["id"] == mid for e in evs))
        assert {e["agent"] for e in events} == {"A"} and other not in {e["id"] for e in events}
        kinds = [e["event"] for e in events if e["id"] == mid]
        assert kinds == ["accepted", "delivering", "delivered"], events
        accepted = events[0]
        assert (accepted["sender"], accepted["preview"]) == ("Agent-2", "watched")
        assert next(e for e in events if e["event"] == "delivered")["latency"] >= 0
    finally:
        conn.close()
    status, _, body = h.get("/api/events?agent=Nobody")
    assert (status, error_code(body)) == (400, "unknown_agent")


def test_a_stream_that_is_not_read_is_dropped_and_the_others_and_the_daemon_go_on(make_daemon):
    agents = [{"id": "A", "transport": "discard"}]  # delivered at once: events come fast
    d = make_daemon(agents=agents, http=HTTP, metrics={"watch_buffer": 500})
    h = Dash(d)
    conn, reader = sse_events(h)  # a stream that keeps up
    received: list[bytes] = []

    def read() -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError, http.client.HTTPException):  # closed under it
            for line in reader:
                received.append(line)

    threading.Thread(target=read, daemon=True).start()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
    stuck.connect(("127.0.0.1", h.port))
    stuck.sendall(f"GET /api/events HTTP/1.1\r\nHost: {h.host}\r\nX-Coordd-Token: {h.token}\r\n\r\n".encode())
    try:
        with d.client() as c:
            wait_until(lambda: c.status().watchers == 2, what="both streams to subscribe")
            for _ in range(100):  # never read: the kernel's buffers fill (MBs), then 500 events wait: dropped
                c.batch(
                    [p.NewMessage(to="A", body="x" * 80) for _ in range(1000)]
                )  # a burst the other one keeps up with
                if c.status().watchers == 1:
                    break
            wait_until(lambda: c.status().watchers == 1, what="the unread stream to be dropped")
            last = c.send("A", "still serving")
        marker = f'"event":"delivered","id":{last},'.encode()
        wait_until(lambda: any(marker in line for line in received), what="the other stream to go on")
    finally:
        stuck.close()
        conn.close()


def test_the_series_counts_the_last_hour_by_second(dash):
    d, h = dash
    with d.client() as c:
        ids = c.batch([p.NewMessage(to="A", body=f"m{i}") for i in range(30)])
        c.send("Bad", "fails")
        wait_until(lambda: c.status().queued == 0 and c.get(ids[-1]).message.status == "delivered")
    before = time.time()

    def series() -> dict:
        status, headers, body = h.get("/api/series")
        assert status == 200 and headers["Cache-Control"] == "no-store"
        return json.loads(body)

    wait_until(lambda: sum(series()["failed"]) == 1, what="the failure to be counted")
    s = series()
    assert s["step"] == 1 and abs(s["start"] + 3599 - before) < 5
    assert all(len(s[k]) == 3600 for k in ("accepted", "delivered", "failed", "latency_p50_ms", "latency_p99_ms"))
    assert (sum(s["accepted"]), sum(s["delivered"]), sum(s["failed"])) == (31, 30, 1)
    latencies = [(a, b) for a, b in zip(s["latency_p50_ms"], s["latency_p99_ms"], strict=True) if a is not None]
    assert latencies and all(0 < a <= b < 60_000 for a, b in latencies)
    assert sum(x is not None for x in s["latency_p50_ms"]) == sum(x > 0 for x in s["delivered"])


def test_the_token_file_is_private_new_at_each_start_and_removed_at_stop(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], http=HTTP)
    first = Dash(d)
    st = os.lstat(first.token_file)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert len(first.token) >= 40
    conn, stream = sse_events(first)  # an open stream does not hold up the stop, and ends with it
    try:
        started = time.monotonic()
        assert d.stop(timeout=10) == 0
        assert stream.read() == b"retry: 1000\n\n" and time.monotonic() - started < 10
    finally:
        conn.close()
    assert not first.token_file.exists()
    first.token_file.symlink_to(d.tmp / "victim")  # a link planted in its place is replaced, never followed
    d.start()
    second = Dash(d)
    assert second.token != first.token and not (d.tmp / "victim").exists()
    assert stat.S_IMODE(os.lstat(second.token_file).st_mode) == 0o600
    assert second.request("GET", "/api/series", headers={"X-Coordd-Token": first.token})[0] == 401


def coordctl(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coordctl", "--socket", d.socket, *args], capture_output=True, text=True, timeout=30
    )


def test_coordctl_dashboard_prints_a_url_that_logs_in(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], http=HTTP)
    h = Dash(d)
    out = coordctl(d, "dashboard")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"http://{h.host}/?token={h.token}"
    path = out.stdout.strip().removeprefix(f"http://{h.host}")
    assert h.request("GET", path)[0] == 303
    as_json = coordctl(d, "--json", "dashboard")
    assert json.loads(as_json.stdout) == {"url": out.stdout.strip()}
    assert f"dashboard http://{h.host}/" in coordctl(d, "status").stdout


def test_coordctl_dashboard_says_how_to_turn_it_on(make_daemon):
    d = make_daemon(agents=[{"id": "A"}])
    out = coordctl(d, "dashboard")
    assert out.returncode == 1 and out.stdout == ""
    assert "[http]" in out.stderr and "listen" in out.stderr and "restart" in out.stderr
    assert not Path(d.socket + ".http-token").exists()


def loaded_aiohttp(pid: int) -> bool:
    """aiohttp's compiled parts are mapped into the process: it was imported."""
    return "/site-packages/aiohttp/" in Path(f"/proc/{pid}/maps").read_text()


def test_aiohttp_is_loaded_only_when_the_dashboard_is_served(make_daemon, tmp_path):
    for sub in ("without", "served"):
        (tmp_path / sub).mkdir()
    without = make_daemon(agents=[{"id": "A"}], sub="without")
    served = make_daemon(agents=[{"id": "A"}], http=HTTP, sub="served")
    assert not loaded_aiohttp(without.proc.pid)
    assert loaded_aiohttp(served.proc.pid)  # so that the check above can fail


def test_a_taken_port_leaves_the_daemon_serving_and_says_why(make_daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = make_daemon(agents=[{"id": "A"}], http={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        with d.client() as c:
            info = c.status()
            assert info.http_url is None and "cannot listen" in (info.http_error or "")
            assert c.send("A", "still serving") > 0
        out = coordctl(d, "dashboard")
        assert out.returncode == 1 and "cannot listen" in out.stderr


def test_a_new_listen_address_waits_for_a_restart(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], http=HTTP)
    h = Dash(d)
    sections = {"daemon": {"socket": d.socket, "workspace": str(d.workspace)}, "store": {"path": d.db}}
    write_config(d.config, {**sections, "http": {"listen": "127.0.0.1:1"}}, [{"id": "A"}])
    with d.client() as c:
        assert c.reload().restart_needed == ["http.listen"]
        assert c.status().http_url == f"http://{h.host}/"
    assert h.get("/api/series")[0] == 200


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"listen": "0.0.0.0:8765"}, "http.allow_remote"),
        ({"listen": "8765"}, "http.listen"),
        ({"listen": "127.0.0.1:http"}, "http.listen"),
        ({"allow_remote": True, "nonsense": 1}, "nonsense"),
    ],
)
def test_check_config_validates_the_http_section(keys, error):
    with pytest.raises(config.ConfigError, match=error):
        config.parse({"http": keys, "agents": [{"id": "A"}]}, "t")
    assert config.parse({"http": {"listen": "[::1]:0"}, "agents": [{"id": "A"}]}, "t").http.listen == "[::1]:0"


def test_the_series_percentiles_are_within_an_eighth_of_the_exact_ones():
    now = 1_800_000_000.5
    latencies = [0.00005, *(0.001 * 1.07**k for k in range(200))]  # 50 us to ~0.8 s

    def record(id: int, created: float) -> Record:
        return Record(id=id, agent="A", body="b", priority="regular", created=created)

    s = Series()
    s.on_delivered([record(id=i, created=now - x) for i, x in enumerate(latencies)], now)
    s.on_delivered([record(id=0, created=now + 1)], now)  # a clock that stepped back counts as the least
    s.on_accepted(3, now)
    got = s.read(now + 1)
    assert got["start"] == int(now) + 1 - 3599 and got["accepted"][-2:] == [3, 0]
    assert got["delivered"][-2] == len(latencies) + 1 and got["latency_p50_ms"][-1] is None
    exact = sorted([0.0, *latencies])
    for key, q in (("latency_p50_ms", 0.5), ("latency_p99_ms", 0.99)):
        want = exact[math.ceil(len(exact) * q) - 1] * 1000
        assert abs(got[key][-2] - want) <= want / 8, (key, got[key][-2], want)
    s.on_failed(now + 3600)  # an hour on, the same bucket holds the new second only
    assert s.read(now + 3600)["accepted"] == [0] * 3600 and s.read(now + 3600)["failed"][-1] == 1
