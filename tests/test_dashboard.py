"""The dashboard (`/ui/`) in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven by
Selenium against `make run`'s demo. The page loads without console errors and shows the demo app and the node; a
knob change is in the loop view within 2 s of the node shim applying it (the shim's journal says when); the mode
switch works through the API; without the token the page refuses and the data routes answer 401; the page's lists
stay capped. Each view's screenshot is saved in tests/artifacts/ for a reviewer (git ignores it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mapemesh.eventing.binding import to_binary
from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.node_shim import simulate

from .conftest import REPO, jsonl, stop, wait_for
from .test_northbound_live import LiveMesh

ARTIFACTS = REPO / "tests" / "artifacts"
KNOB_APPLIED = "io.mapemesh.knob.applied.v1"
PROBE = "io.example.dashboard.probe.v1"
"""An event type no Trigger takes: it only goes through the log and the stream."""
WITHIN_S = 2.0
"""The issue's acceptance point: from the shim's apply to the row in the loop view."""


@dataclass
class Demo(LiveMesh):
    """The demo's mesh: its API (with the token) and its broker."""

    broker: str = ""

    @property
    def journal(self) -> Path:
        return self.data / "node-shim" / "demo-node" / "journal.jsonl"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`make run` (`python -m mapemesh.cli.demo`) on free ports, a simulated intel_pstate node, latency flipping
    every 3 s; ready once the demo app and node are in the mesh."""
    root = tmp_path_factory.mktemp("dashboard")
    data = root / "data"
    simulate.create(root / "sysfs", "intel_pstate")
    env = {**os.environ, "MAPEMESH_DATA": str(data), "MAPEMESH_BROKER_PORT": "0", "MAPEMESH_SERVING_PORT": "0",
           "MAPEMESH_NODE_SHIM_PORT": "0", "MAPEMESH_API_PORT": "0", "MAPEMESH_SYSFS_ROOT": str(root / "sysfs"),
           "MAPEMESH_NODE": "demo-node", "MAPEMESH_DEMO_PERIOD_S": "3"}
    log = open(root / "demo.log", "wb")  # noqa: SIM115 (closed after the process)
    proc = subprocess.Popen([sys.executable, "-m", "mapemesh.cli.demo"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)

    def placed() -> Demo | None:
        assert proc.poll() is None, (root / "demo.log").read_text()[-3000:]
        found = json.loads((data / "endpoints.json").read_text()) if (data / "endpoints.json").exists() else {}
        if "api" not in found:
            return None
        running = Demo(proc, data, found["api"], (data / "api.token").read_text().strip(), found["broker"])
        try:
            doc = httpx.get(running.api + "/dashboard/continuum", headers=running.auth, timeout=10).json()
        except httpx.HTTPError:
            return None
        nodes = {n["node"]: n for n in doc["nodes"]}
        ready = any(a["app_id"] == "demo-app" and a["placement"] for a in doc["applications"]) and \
            nodes.get("demo-node", {}).get("knobs")
        return running if ready else None

    try:
        yield wait_for(placed, timeout=90, interval=0.5, what="the demo app placed and the node's knobs")
    finally:
        stop(proc, signal.SIGINT, 30)  # Ctrl-C, as `make run` is stopped
        log.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Headless Chromium through chromedriver, its console kept (`get_log("browser")`); skipped with the reason
    when they are not installed, except in CI (`.ci/run` installs them)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [name for name, found in (("chromium", browser), ("chromium-driver", driver),
                                        ("selenium", webdriver)) if not found]
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


def severe(driver) -> list[dict]:
    """The console's errors since the last call (each call drains the log)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def until(driver, condition, timeout: float = 15.0, what: str = "the page"):
    """WebDriverWait for `condition` (a row the page replaced meanwhile is looked up again)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
                         ).until(condition, f"timed out waiting for {what}")


def css(selector: str):
    """A WebDriverWait condition: the first element matching `selector`, or False."""
    from selenium.webdriver.common.by import By

    return lambda driver: next(iter(driver.find_elements(By.CSS_SELECTOR, selector)), False)


def text(driver, selector: str) -> str:
    """The text of the first element matching `selector` ('' when none), read at once: the views redraw."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                                 selector)


def click(driver, selector: str, what: str) -> None:
    """Click the element matching `selector` once it is there (again, if the view redrew it meanwhile)."""
    until(driver, lambda d: css(selector)(d) and (css(selector)(d).click() or True), what=what)


def open_page(driver, demo: Demo, view: str) -> None:
    """Load the page afresh with the token in the fragment, then show `view` once it is authorized and its event
    stream is open (the console's earlier entries are dropped: each test checks its own)."""
    driver.get("about:blank")  # a new document, not a same-page fragment change
    severe(driver)
    driver.get(f"{demo.api}/ui/#token={demo.token}")
    until(driver, css('body[data-auth="ok"]'), what="the page to take the token")
    until(driver, css('#stream[data-state="open"]'), what="the event stream")
    click(driver, f'#nav button[data-view="{view}"]', f"the {view} tab")
    until(driver, css(f'body[data-view="{view}"]'), what=f"the {view} view")


def screenshot(driver, view: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"dashboard-{view}.png"))


def shown(driver, text: str) -> int:
    """How many rows of the loop's timeline end with `text`."""
    return driver.execute_script("return [...document.querySelectorAll('#timeline li')]"
                                 ".filter(li => li.textContent.endsWith(arguments[0])).length", text)


def post(demo: Demo, http: httpx.Client, source: str) -> None:
    event = CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": PROBE})
    headers, body = to_binary(event)
    assert http.post(demo.broker + "/default/default", headers=headers, content=body).status_code == 202


def test_the_page_loads_without_console_errors_and_shows_the_demo_app_and_the_node(demo, chromium):
    open_page(chromium, demo, "now")
    assert "token" not in chromium.current_url  # taken from the fragment, not left in the address bar
    until(chromium, css('#functions tr[data-function="default/monitor"]'), what="the functions")
    until(chromium, css('#triggers tr[data-trigger="default/monitor"]'), what="the triggers")
    until(chromium, lambda d: text(d, "#backlog .big").isdigit(), what="the broker's backlog")
    screenshot(chromium, "now")

    click(chromium, '#nav button[data-view="continuum"]', "the continuum tab")
    node = '[data-cluster="demo-cluster"] [data-node="demo-node"]'
    until(chromium, lambda d: all(w in text(d, node) for w in ("CPUFrequency", "runs demo-app/worker")),
          what="the node in its cluster, its knob and what runs there")
    until(chromium, lambda d: "web latency_ms" in text(d, '[data-app="demo-app"]'), what="the demo app's target")
    until(chromium, css('[data-target="demo-app/web/latency_ms"] svg path'), what="the target's chart")
    screenshot(chromium, "continuum")
    assert severe(chromium) == []


def test_a_knob_change_is_in_the_loop_view_within_2_s_of_the_shim_applying_it(demo, chromium):
    open_page(chromium, demo, "loop")
    seen_before = len(jsonl(demo.journal))

    def applied() -> dict | None:
        entries = jsonl(demo.journal)[seen_before:]
        return next((e for e in entries if e.get("plan_id") and not e.get("error") and not e.get("noop")), None)

    entry = wait_for(applied, timeout=30, what="the node shim to apply a policy's knob change")
    row = until(chromium, css(f'#timeline li[data-type="{KNOB_APPLIED}"][data-plan="{entry["plan_id"]}"]'),
                timeout=10, what="the knob change in the timeline")
    shown_after = float(row.get_attribute("data-seen")) - entry["at"]
    assert shown_after <= WITHIN_S, f"the knob change showed {shown_after:.3f} s after the shim applied it"
    assert f"demo-node {entry['knob']}" in row.text

    click(chromium, f'#plans tr[data-plan="{entry["plan_id"]}"][data-status="Success"]', "the plan's status")
    until(chromium, css(f'#trace-table[data-plan="{entry["plan_id"]}"]'), what="the plan's causal chain")
    hops = text(chromium, "#trace-table")  # each hop with its latency
    assert "telemetry.reported.v1" in hops and "knob.applied.v1" in hops and " ms" in hops
    screenshot(chromium, "loop")
    assert severe(chromium) == []


def test_the_pages_lists_stay_capped_and_a_reconnect_resumes_where_it_stopped(demo, chromium):
    open_page(chromium, demo, "loop")
    caps = chromium.execute_script("return window.mapemeshDashboard.caps")
    assert int(css("#timeline")(chromium).get_attribute("data-cap")) == caps["MAX_TIMELINE"]
    many = caps["MAX_TIMELINE"] + 25
    with httpx.Client(timeout=10) as http:
        for i in range(many):
            post(demo, http, f"/test/probe/{i}")
        until(chromium, lambda d: shown(d, f"/test/probe/{many - 1}"), what="the last probe in the timeline")
        sizes = chromium.execute_script("return window.mapemeshDashboard.sizes()")
        assert sizes["timeline"] == caps["MAX_TIMELINE"], sizes
        assert sizes["plans"] <= caps["MAX_PLANS"] and sizes["plan_rows"] <= caps["MAX_PLANS"], sizes
        assert sizes["assets"] <= caps["MAX_ASSETS"] and sizes["rate_points"] <= caps["MAX_RATE_POINTS"], sizes

        # The stream breaks; what is logged meanwhile arrives once, after the reconnect (Last-Event-ID), and
        # nothing shown before is shown again.
        chromium.execute_script("window.mapemeshDashboard.dashboard.stream.controller.abort()")
        until(chromium, css('#stream[data-state="reconnecting"]'), what="the stream to break")
        post(demo, http, "/test/probe/while-away")
    until(chromium, css('#stream[data-state="open"]'), what="the stream to reconnect")
    until(chromium, lambda d: shown(d, "/test/probe/while-away"), what="the event logged meanwhile")
    seqs = chromium.execute_script("return [...document.querySelectorAll('#timeline li')].map(li => li.dataset.seq)")
    assert len(seqs) == len(set(seqs)), "an event was shown twice"
    assert shown(chromium, "/test/probe/while-away") == 1
    assert severe(chromium) == []


def test_the_mode_switch_changes_the_mode_through_the_api(demo, chromium):
    open_page(chromium, demo, "policies")
    until(chromium, css('#policies tr[data-policy="cpu-frequency"]'), what="the policies")
    screenshot(chromium, "policies")

    def mode() -> dict:
        return httpx.get(demo.api + "/manage/mode", headers=demo.auth, timeout=10).json()

    try:
        for button, wanted in (("#mode-ml", {"mode": "ml", "manual_override": False}),
                               ("#override-on", {"mode": "ml", "manual_override": True}),
                               ("#override-off", {"mode": "ml", "manual_override": False}),
                               ("#mode-heuristic", {"mode": "heuristic", "manual_override": False})):
            click(chromium, button, button)
            wait_for(lambda wanted=wanted: mode() == wanted, what=f"the mesh's mode to become {wanted}")
            until(chromium, css(f'#mode[data-mode="{wanted["mode"]}"]'
                                f'[data-override="{str(wanted["manual_override"]).lower()}"]'),
                  what=f"the page to show {wanted}")
    finally:  # the demo's loop as it was, whatever failed
        for path in ("/manage/mode/heuristic", "/manage/override/off"):
            httpx.put(demo.api + path, headers=demo.auth, timeout=10)
    assert severe(chromium) == []


def test_without_the_token_the_page_refuses_and_the_data_routes_answer_401(demo, chromium):
    chromium.get(f"{demo.api}/ui/")
    chromium.execute_script("sessionStorage.clear()")
    chromium.refresh()
    until(chromium, css('body[data-auth="none"]'), what="the page to ask for the token")
    assert css("#views")(chromium).get_attribute("hidden") is not None
    assert css("#token-form")(chromium).is_displayed()

    chromium.get(f"{demo.api}/ui/#token=not-the-token")
    until(chromium, css('body[data-auth="refused"]'), what="the page to say it is refused")
    assert "Refused" in css("#login-reason")(chromium).text
    assert css("#views")(chromium).get_attribute("hidden") is not None
    screenshot(chromium, "refused")
    errors = severe(chromium)
    assert errors and all("401" in e["message"] for e in errors), errors  # the API's answer, nothing else

    for method, path in (("GET", "/dashboard/now"), ("GET", "/dashboard/continuum"), ("GET", "/dashboard/policies"),
                         ("GET", "/trace/x"), ("GET", "/events/stream"), ("GET", "/manage/mode"),
                         ("PUT", "/manage/mode/ml"), ("PUT", "/manage/override/on")):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            assert httpx.request(method, demo.api + path, headers=headers, timeout=10).status_code == 401, path
    assert httpx.get(demo.api + "/ui/", timeout=10).status_code == 200  # the page itself holds no data


def test_events_the_page_cannot_show_do_not_break_the_live_stream(demo, chromium):
    """Events are anyone's who may post to the broker: a type that is an Object.prototype name, a plan id that is
    no string, an event larger than the page reads. Each is that event's loss only: the stream stays open (no
    reconnect, which would fetch the same event again) and the next event is shown."""
    open_page(chromium, demo, "loop")
    until(chromium, css('#stream[data-state="open"]'), what="the live stream")
    chromium.execute_script("window.mapemeshDashboard.dashboard.stream.opened = 0;"
                            "const s = window.mapemeshDashboard.dashboard.stream, on = s.onState;"
                            "s.onState = (state, why) => { if (state === 'open') s.opened++; on(state, why); };")
    cap = chromium.execute_script("return window.mapemeshDashboard.caps.MAX_BUFFER")
    odd = [({"type": "constructor"}, b'{"plan_id": 5}'), ({"type": "io.mapemesh.plan.proposed.v1"}, b'{"plan_id": 7}'),
           ({"type": "toString", "datacontenttype": "text/plain"}, b"\x01" * min(cap // 5, (1 << 20) - 4096))]
    with httpx.Client(timeout=30) as http:
        for attrs, data in odd:
            event = CloudEvent({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/test/odd", **attrs}, data)
            headers, body = to_binary(event)
            assert http.post(demo.broker + "/default/default", headers=headers, content=body).status_code == 202
        post(demo, http, "/test/probe/after-the-odd-ones")
    until(chromium, lambda d: shown(d, "/test/probe/after-the-odd-ones"), what="the event after the odd ones")
    assert chromium.execute_script("return window.mapemeshDashboard.dashboard.stream.opened") == 0, "it reconnected"
    assert css('#stream[data-state="open"]')(chromium)
    assert severe(chromium) == []
