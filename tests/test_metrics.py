"""Prometheus metrics: scraped over HTTP and through `coordctl metrics`, parsed, linted, counted exactly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families

from coordctl import CoordError, __version__
from coordd import config

# Bad's inbox is blocked (each attempt fails); Down is a tmux agent on a machine without tmux (down).
AGENTS = [{"id": "A1"}, {"id": "A2"}, {"id": "Bad"}, {"id": "Down", "transport": "tmux", "target": "nowhere:0.0"}]
PROMTOOL = shutil.which("promtool")  # looked up before any test narrows PATH
TWO_FAST_TRIES = {"max_attempts": 2, "backoff_initial_ms": 20, "backoff_max_ms": 20, "unhealthy_recheck_ms": 50}


@pytest.fixture
def no_tmux(monkeypatch):
    """The daemon finds no tmux on its PATH, so its tmux agent is down (really: the transport's own check)."""
    monkeypatch.setenv("PATH", "/nonexistent")


def block_inbox(d, agent: str) -> None:
    d.inbox(agent).parent.mkdir(parents=True, exist_ok=True)
    d.inbox(agent).write_text("a file where the inbox directory should be: every delivery fails")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def test_scrape_counts_every_outcome_and_passes_promtool(make_daemon, no_tmux):
    d = make_daemon(agents=AGENTS, delivery=TWO_FAST_TRIES, metrics={"listen": "127.0.0.1:0"}, start=False)
    block_inbox(d, "Bad")
    d.start()
    with d.client() as c:
        url = c.status().metrics_url
        assert url is not None and url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        for i in range(5):
            c.send("A1", f"to A1 {i}")
        c.batch([{"to": "A2", "body": f"to A2 {i}"} for i in range(3)])
        for i in range(3):
            c.send("Bad", f"doomed {i}")  # attempt 1 fails (retried), attempt 2 fails (failed)
        down = c.batch([{"to": "Down", "body": f"waits {i}"} for i in range(4)])
        c.cancel(down[0])
        with pytest.raises(CoordError):
            c.send("Nobody", "refused")
        wait_until(
            lambda: len(c.history(status="delivered").messages) == 8 and len(c.history(status="failed").messages) == 3,
            what="8 delivered, 3 failed",
        )
        text = scrape(url)
        over_socket = c.metrics()
    found = samples(text)
    inbox = {"transport": "inbox"}
    for agent, accepted, delivered, retried, failed in (("A1", 5, 5, 0, 0), ("A2", 3, 3, 0, 0), ("Bad", 3, 0, 3, 3)):
        assert value(found, "coordd_messages_accepted_total", agent=agent, **inbox) == accepted
        assert value(found, "coordd_messages_delivered_total", agent=agent, **inbox) == delivered
        assert value(found, "coordd_messages_retried_total", agent=agent, **inbox) == retried
        assert value(found, "coordd_messages_failed_total", agent=agent, **inbox) == failed
        assert value(found, "coordd_delivery_latency_seconds_count", agent=agent, **inbox) == delivered
        assert value(found, "coordd_delivery_latency_seconds_bucket", agent=agent, le="+Inf", **inbox) == delivered
        assert value(found, "coordd_transport_healthy", agent=agent, **inbox) == 1
        assert value(found, "coordd_queue_depth", agent=agent, **inbox) == 0
    assert value(found, "coordd_delivery_latency_seconds_bucket", agent="A1", le="30.0", **inbox) == 5
    assert value(found, "coordd_delivery_latency_seconds_sum", agent="A1", **inbox) > 0
    tmux = {"agent": "Down", "transport": "tmux"}
    assert value(found, "coordd_messages_accepted_total", **tmux) == 4
    assert value(found, "coordd_messages_cancelled_total", **tmux) == 1
    assert value(found, "coordd_transport_healthy", **tmux) == 0
    assert value(found, "coordd_queue_depth", **tmux) == 3
    assert value(found, "coordd_queue_bytes", **tmux) == sum(sys.getsizeof(f"waits {i}") for i in (1, 2, 3))
    assert value(found, "coordd_queue_bytes", agent="A1", **inbox) == 0
    assert value(found, "coordd_queue_oldest_age_seconds", **tmux) > 0
    assert value(found, "coordd_deliveries_in_flight", **tmux) == 0
    assert value(found, "coordd_rpc_duration_seconds_count", method="send") == 9  # 5 + 3 + the refused one
    assert value(found, "coordd_rpc_duration_seconds_count", method="batch") == 2
    assert value(found, "coordd_rpc_duration_seconds_bucket", method="batch", le="+Inf") == 2
    assert value(found, "coordd_requests_rejected_total", code="unknown_agent") == 1
    assert value(found, "coordd_requests_rejected_total", code="bad_request") == 0
    assert value(found, "coordd_store_rows") == 15
    assert value(found, "coordd_store_size_bytes") > 0
    assert value(found, "coordd_store_commits_total") >= 1
    # Every commit is in the batch-size histogram; its writes: at least the 11 requests that stored something.
    commits = value(found, "coordd_store_commits_total")
    assert value(found, "coordd_store_commit_batch_size_count") == commits
    assert value(found, "coordd_store_commit_batch_size_bucket", le="+Inf") == commits
    assert value(found, "coordd_store_commit_batch_size_sum") >= 11
    assert value(found, "coordd_connections") >= 1
    assert value(found, "coordd_build_info", version=__version__) == 1
    assert ("process_resident_memory_bytes", frozenset()) in found
    # The socket gives the same metrics as HTTP.
    assert {name for name, _ in samples(over_socket)} == {name for name, _ in found}
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; `make deps` installs it)")
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_bad_frames_and_refusals_are_counted_by_code(daemon):
    with daemon.client() as c:
        c.connect()
        c._sock.sendall(b"\x00\x00\x00\x03abc")  # not msgpack: bad_request, the connection stays
        with pytest.raises(CoordError):
            c.ping()  # reads the error reply first: out of step, so the client drops the connection
        with pytest.raises(CoordError):
            c.cancel(424242)
        found = samples(c.metrics())
    assert value(found, "coordd_requests_rejected_total", code="bad_request") == 1
    assert value(found, "coordd_requests_rejected_total", code="unknown_message") == 1
    assert value(found, "coordd_rpc_duration_seconds_count", method="cancel") == 1


def test_http_is_off_by_default_and_serves_only_metrics(make_daemon, daemon, tmp_path):
    with daemon.client() as c:
        assert c.status().metrics_url is None
        assert "coordd_messages_accepted_total" in c.metrics()  # the socket serves them either way
    (tmp_path / "http").mkdir()
    d = make_daemon(metrics={"listen": "127.0.0.1:0"}, sub="http")
    with d.client() as c:
        url = c.status().metrics_url
    root = url.removesuffix("metrics")
    assert "coordd_connections" in scrape(root)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(root + "nope", timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=10)
    assert e.value.code == 405


def test_a_taken_port_leaves_the_daemon_serving(make_daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(metrics={"listen": f"127.0.0.1:{port}"})
        with d.client() as c:
            st = c.status()
            assert st.metrics_url is None and f"127.0.0.1:{port}" in st.metrics_error
            assert c.send("Agent-1", "still delivered", wait=True)


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"listen": "0.0.0.0:9464"}, "metrics.allow_remote"),
        ({"listen": "192.168.1.5:9464"}, "not a loopback address"),
        ({"listen": "9464"}, "metrics.listen"),
        ({"listen": "127.0.0.1:http"}, "metrics.listen"),
        ({"listen": "127.0.0.1:70000"}, "metrics.listen"),
        ({"watch_buffer": 0}, "metrics.watch_buffer"),
        ({"listn": "127.0.0.1:9464"}, "listn"),
    ],
)
def test_config_refuses_remote_and_malformed_addresses(keys, error):
    with pytest.raises(config.ConfigError, match=error):
        config.parse({"metrics": keys, "agents": [{"id": "A"}]}, "test.toml")


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:0", "127.0.0.2:1"])
def test_config_takes_loopback_addresses(listen):
    assert config.parse({"metrics": {"listen": listen}, "agents": [{"id": "A"}]}, "t").metrics.listen == listen
    remote = {"listen": "0.0.0.0:9464", "allow_remote": True}
    assert config.parse({"metrics": remote, "agents": [{"id": "A"}]}, "t").metrics.allow_remote


def test_reload_adds_series_and_a_new_transport_starts_its_own(make_daemon, no_tmux):
    d = make_daemon(agents=[{"id": "A"}, {"id": "B"}])
    with d.client() as c:
        c.send("B", "via the inbox", wait=True)
        sections = {"daemon": {"socket": d.socket, "workspace": str(d.workspace)}, "store": {"path": d.db}}
        write_config(
            d.config, sections, [{"id": "A"}, {"id": "B", "transport": "tmux", "target": "s:0.0"}, {"id": "C"}]
        )
        assert c.reload().added == ["C"]
        c.send("B", "waits: no tmux here")
        wait_until(lambda: not c.status().agents[1].healthy, what="B down on its new transport")
        found = samples(c.metrics())
    assert value(found, "coordd_messages_delivered_total", agent="B", transport="inbox") == 1  # kept
    assert value(found, "coordd_messages_accepted_total", agent="B", transport="tmux") == 1
    assert value(found, "coordd_queue_depth", agent="B", transport="tmux") == 1
    assert value(found, "coordd_transport_healthy", agent="B", transport="tmux") == 0
    assert value(found, "coordd_messages_accepted_total", agent="C", transport="inbox") == 0
    assert ("coordd_queue_depth", frozenset({"agent": "B", "transport": "inbox"}.items())) not in found


def test_a_new_listen_address_waits_for_a_restart_and_the_endpoint_keeps_serving(make_daemon):
    d = make_daemon(agents=[{"id": "A"}], metrics={"listen": "127.0.0.1:0"})
    with d.client() as c:
        url = c.status().metrics_url
        sections = {
            "daemon": {"socket": d.socket, "workspace": str(d.workspace)},
            "store": {"path": d.db},
            "metrics": {"listen": "127.0.0.1:1"},
        }
        write_config(d.config, sections, [{"id": "A"}])
        assert c.reload().restart_needed == ["metrics.listen"]
        assert c.status().metrics_url == url
    assert value(samples(scrape(url)), "coordd_build_info", version=__version__) == 1
