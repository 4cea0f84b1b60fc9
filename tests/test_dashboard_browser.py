"""The dashboard page in a real browser: headless Debian chromium, driven by Selenium, against a real daemon
with [http] on a free loopback port. One browser serves the whole module; each test starts its own daemon."""

from __future__ import annotations

import importlib.resources
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import browser
import pytest
from conftest import Daemon, inbox_bodies, wait_until
from test_core import block_inbox, unblock_inbox

PAGE_FILES = ("index.html", "app.js", "style.css")
FAIL_AT_ONCE = {"backoff_initial_ms": 20, "backoff_max_ms": 100, "unhealthy_recheck_ms": 50, "max_attempts": 1}


def test_the_installed_package_ships_the_page_and_it_loads_nothing_from_elsewhere():
    page = importlib.resources.files("coordd") / "dashboard"
    assert "site-packages" in str(page), f"tests run the installed package, not the tree: {page}"
    for name in PAGE_FILES:
        assert (page / name).is_file(), f"{name} is not in the wheel (pyproject: package-data)"
    html = (page / "index.html").read_text()
    # Everything the page loads is its own: /static/ files of the package (or data: URLs), no CDN.
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs, "index.html loads no script or style"
    for ref in refs:
        assert ref.startswith("data:") or (ref.startswith("/static/") and (page / ref[8:]).is_file()), ref
    assert '<meta name="coordd-token"' in html  # where the server puts the token for the page's POSTs
    for name in PAGE_FILES:
        text = (page / name).read_text()
        own = text.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace names, loads nothing
        assert not re.search(r"https?://|[\"'(]//", own), f"{name} refers to another site"
    # Message data is untrusted: it only ever reaches the page as text, never parsed as markup.
    js = (page / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, f"app.js uses {sink}"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    why = browser.missing()
    if why:
        pytest.skip(why)
    d = browser.chromium(tmp_path_factory.mktemp("chromium"))
    yield d
    d.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard:
    """A daemon with [http] on, and the dashboard's address with its token."""

    def __init__(self, make_daemon, agents: list[dict] | None = None, **sections) -> None:
        self.port = free_port()
        self.daemon: Daemon = make_daemon(agents=agents, http={"listen": f"127.0.0.1:{self.port}"}, **sections)
        token_file = Path(self.daemon.socket + ".http-token")
        self.token = wait_until(lambda: token_file.exists() and token_file.read_text().strip(), what="the token")
        self.base = f"http://127.0.0.1:{self.port}"

    def open(self, driver) -> None:
        # Leave an earlier test's page (its daemon is gone: its requests fail) and drop what it logged; what
        # this page logs from its first request on counts.
        driver.get("about:blank")
        driver.get_log("browser")
        driver.get(f"{self.base}/?token={self.token}")
        wait_until(lambda: js(driver, "return document.getElementById('conn').dataset.state") == "live", 5, "the feed")


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def agent_names(driver) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('#agents tbody tr')].map(r => r.dataset.agent)")


def feed_rows(driver) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('#feed > .feed-row')].map(r => r.textContent)")


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_lists_every_agent_with_its_state(make_daemon, driver):
    agents = [{"id": f"Agent-{n}"} for n in range(1, 51)] + [{"id": "Puller", "transport": "pull"}]
    dash = Dashboard(make_daemon, agents)
    with dash.daemon.client() as c:
        c.pause("Agent-7")
        c.send("Puller", "waits to be fetched")
    dash.open(driver)
    names = [a["id"] for a in agents]
    wait_until(lambda: agent_names(driver) == names, 5, "the 51 agents listed")
    row = {
        cell: js(driver, f"return document.querySelector('#agents tr[data-agent=\"{agent}\"] td.{cell}').textContent")
        for agent, cell in (("Agent-7", "paused"), ("Puller", "queued"), ("Puller", "transport"), ("Agent-1", "health"))
    }
    assert row == {"paused": "paused", "queued": "1", "transport": "pull", "health": "up"}
    assert console_errors(driver) == []


def test_a_message_sent_with_coordctl_shows_in_the_feed_within_a_second_as_text(make_daemon, driver):
    dash = Dashboard(make_daemon)
    dash.open(driver)
    js(driver, "window.notReloaded = true")
    body = "<b>bold?</b> <img src=x onerror=alert(1)> deploy is blocked"
    with dash.daemon.client() as c:
        sent = c.send("Agent-2", body, sender="Agent-1")
        # Polled with a deadline of a second from the send: the page is pushed the events, it reloads nothing.
        rows = wait_until(
            lambda: [r for r in feed_rows(driver) if f"#{sent}" in r and "delivered" in r] and feed_rows(driver),
            1.0,
            "the message's delivery in the feed",
        )
    accepted = [r for r in rows if f"#{sent}" in r and "accepted" in r]
    assert accepted and body in accepted[0] and "Agent-1 → Agent-2" in accepted[0]  # the markup shown as text
    assert js(driver, "return document.querySelectorAll('#feed img, #feed b').length") == 0
    assert js(driver, "return window.notReloaded") is True
    # /api/series, drawn each second: the delivered line rises off its baseline at the delivery's second.
    rises = (
        "const d = document.querySelector('#chart-rate path.delivered').getAttribute('d') || '';"
        "const ys = [...d.matchAll(/[ML][\\d.]+,([\\d.]+)/g)].map(m => +m[1]);"
        "return ys.length > 1 && Math.min(...ys) < Math.max(...ys)"
    )
    wait_until(lambda: js(driver, rises), 5, "the delivery in the rate chart")
    assert console_errors(driver) == []


def test_the_feed_filters_by_agent_and_holds_its_rows_while_paused(make_daemon, driver):
    dash = Dashboard(make_daemon)
    dash.open(driver)
    agent = driver.find_element("id", "feed-agent")
    wait_until(lambda: "Agent-3" in agent.text, 5, "the agents in the feed's filter")
    js(driver, "const s = arguments[0]; s.value = 'Agent-3'; s.dispatchEvent(new Event('change'))", agent)
    with dash.daemon.client() as c:
        other = c.send("Agent-2", "not for the filter")
        mine = c.send("Agent-3", "for the filter")
        wait_until(lambda: any(f"#{mine}" in r for r in feed_rows(driver)), 5, "Agent-3's message in the feed")
        # Events come in order: Agent-2's, sent first, would be there by now.
        assert not any(f"#{other}" in r for r in feed_rows(driver))

        driver.find_element("id", "feed-pause").click()
        held = c.send("Agent-3", "while paused")
        banner = "return document.getElementById('feed-paused').textContent"
        wait_until(lambda: "new event" in js(driver, banner), 5, "the paused feed to count the new events")
        assert not any(f"#{held}" in r for r in feed_rows(driver))
        driver.find_element("id", "feed-pause").click()
        wait_until(lambda: any(f"#{held}" in r for r in feed_rows(driver)), 5, "the held rows shown on resume")
    assert console_errors(driver) == []


def test_the_retry_button_queues_a_failed_message_again(make_daemon, driver):
    dash = Dashboard(make_daemon, [{"id": "A"}, {"id": "B"}], delivery=FAIL_AT_ONCE)
    block_inbox(dash.daemon, "A")
    with dash.daemon.client() as c:
        dash.open(driver)
        failed = c.send("A", "needs a second try", sender="B")
        wait_until(lambda: c.get(failed).message.status == "failed", what="the delivery to fail")
        button = f'#failures li[data-id="{failed}"] button.retry'
        wait_until(lambda: js(driver, f"return document.querySelector('{button}') !== null"), 10, "the Retry button")
        unblock_inbox(dash.daemon, "A")
        driver.find_element("css selector", button).click()
        wait_until(lambda: c.get(failed).message.status == "delivered", what="the retried message delivered")
        assert c.get(failed).message.attempts == 2
    assert inbox_bodies(dash.daemon.inbox("A")) == ["needs a second try"]
    gone = f"return document.querySelector('#failures li[data-id=\"{failed}\"]') === null"
    wait_until(lambda: js(driver, gone), 10, "the failure to leave the list")
    assert console_errors(driver) == []


def test_search_message_view_and_compose_work_without_a_console_error(make_daemon, driver):
    dash = Dashboard(make_daemon)
    with dash.daemon.client() as c:
        first = c.send("Agent-1", "the release checklist is ready", sender="Agent-3", subject="release")
        c.send("Agent-1", "lunch?", sender="Agent-3")
        wait_until(lambda: c.get(first).message.status == "delivered", what="the delivery")
    dash.open(driver)
    driver.find_element("id", "search-text").send_keys("checklist")
    driver.find_element("css selector", "#search button[type=submit]").click()
    ids = "return [...document.querySelectorAll('#results tbody tr')].map(r => Number(r.dataset.id))"
    wait_until(lambda: js(driver, ids) == [first], 5, "the search's one match")
    driver.find_element("css selector", f'#results tr[data-id="{first}"]').click()
    view = "return document.getElementById('message-content').textContent"
    wait_until(lambda: "Attempts (1)" in js(driver, view), 5, "the message view")
    assert "the release checklist is ready" in js(driver, view) and "Thread" in js(driver, view)
    driver.find_element("css selector", "dialog .close button").click()

    driver.find_element("id", "compose-to").send_keys("Agent-2")
    driver.find_element("id", "compose-body").send_keys("from the operator")
    driver.find_element("css selector", "#compose button[type=submit]").click()
    sent = ["from the operator"]
    wait_until(lambda: inbox_bodies(dash.daemon.inbox("Agent-2")) == sent, what="the operator's message")
    with dash.daemon.client() as c:
        assert c.history(agent="Agent-2").messages[0].sender == "operator"
    assert console_errors(driver) == []


def test_every_path_without_the_token_is_401(make_daemon):
    dash = Dashboard(make_daemon)

    def status(path: str, data: bytes | None = None, headers: dict | None = None) -> int:
        request = urllib.request.Request(dash.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            assert e.code != 401 or json.load(e)["error"]["code"] == "unauthorized"
            return e.code

    call = json.dumps({"op": "status"}).encode()
    for path in ("/", "/static/app.js", "/api/series", "/api/events", "/metrics"):
        assert status(path) == 401, path
    assert status("/?token=wrong") == 401
    assert status("/api/call", call, {"Content-Type": "application/json"}) == 401
    assert status("/api/call", call, {"X-Coordd-Token": "wrong"}) == 401
    # A cookie alone does not make a POST: only the page, which read the token, can send the header.
    assert status("/api/call", call, {"Cookie": f"coordd_token={dash.token}"}) == 401
    assert status("/api/series", headers={"Cookie": f"coordd_token={dash.token}"}) == 200
    assert status("/api/call", call, {"X-Coordd-Token": dash.token}) == 200
