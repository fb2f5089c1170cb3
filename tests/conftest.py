"""Fixtures that run real mapemesh processes on loopback, and the `live` marker for the tests that start them.

`pytest -m "not live"` runs the unit tests alone (about a minute on a 2-core machine); `pytest -m live` the tests
that start a mesh, a broker, redis-server, a node shim, a server, a compiler or the CLI as processes (by module, by
fixture, or by what a test or a fixture of tests/ it uses calls); plain `pytest` runs both.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TESTS = REPO / "tests"

LOCAL_MIN_WINDOW = "100ms"
os.environ["MAPEMESH_LOCAL_MIN_WINDOW"] = LOCAL_MIN_WINDOW
"""The suite's Services idle for 100 ms to 2 s, to see scale to zero in test time. Knative takes windows of 6s..1h
only; the local host admits shorter ones through this documented setting alone (README, "Knative's rules on one
machine"), which every mesh a test starts inherits. Tests of the rule itself unset it."""



def _following_settings(change: Callable[..., None]) -> Callable[..., None]:
    """A MonkeyPatch method that also makes this process's settings (`mapemesh.settings.current()`) read the
    environment again, as a function process does when it is given its Service's env."""
    def changed(self: pytest.MonkeyPatch, *args: object, **kwargs: object) -> None:
        change(self, *args, **kwargs)
        from mapemesh import settings

        settings.reset()
    return changed


pytest.MonkeyPatch.setenv = _following_settings(pytest.MonkeyPatch.setenv)  # type: ignore[method-assign]
pytest.MonkeyPatch.delenv = _following_settings(pytest.MonkeyPatch.delenv)  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _settings_of_this_test() -> Iterator[None]:
    """Each test starts with settings read from its environment (the last test's monkeypatch is undone)."""
    from mapemesh import settings

    settings.reset()
    yield
    settings.reset()


LIVE_MODULES = frozenset({
    "test_accel_live", "test_northbound_live", "test_serving", "test_loop", "test_demo", "test_deferral",
    "test_cluster_e2e", "test_deploy_e2e", "test_cli", "test_cluster_components", "test_functions_ecosystem",
    "test_function_runtime", "test_durability", "test_policy_cli", "test_storage_gateway", "test_storage_loop",
    "test_trust_loop", "test_function_process",
})
"""Modules whose every test starts processes."""
LIVE_FIXTURES = frozenset({
    "broker", "broker_factory", "shared_broker", "batch_broker",  # `mapemesh broker serve`
    "mesh", "mesh_factory", "mesh_replies", "loop_factory", "reaction",  # `mapemesh up`
    "redis_url",  # redis-server
    "mosquitto_url",  # mosquitto
    "demo", "chromium",  # `make run`'s demo; headless Chromium (tests/test_dashboard.py)
})
"""Fixtures that start processes: a test that uses one is live."""
PROCESS_NAMES = frozenset({"subprocess", "Popen", "multiprocessing", "create_subprocess_exec", "start_mesh",
                           "start_broker", "s3_locations"})
"""Names whose use in a test, or in a function of tests/ that it calls, starts a process."""


def _starts_processes(code: types.CodeType, namespace: dict, seen: set[types.CodeType]) -> bool:
    """Whether `code`, a function nested in it, or a function of tests/ that it names uses one of PROCESS_NAMES."""
    if code in seen:
        return False
    seen.add(code)
    for name in code.co_names:
        if name in PROCESS_NAMES:
            return True
        helper = namespace.get(name)
        if isinstance(helper, types.FunctionType) and Path(helper.__code__.co_filename).is_relative_to(TESTS) \
                and _starts_processes(helper.__code__, helper.__globals__, seen):
            return True
    return any(isinstance(c, types.CodeType) and _starts_processes(c, namespace, seen) for c in code.co_consts)


def is_live(item: pytest.Item) -> bool:
    """Whether a test starts processes: by its module, its fixtures, or what its code or a fixture of tests/ that
    it uses (a module's own mesh, say) calls."""
    if item.path.stem in LIVE_MODULES or LIVE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    info = getattr(item, "_fixtureinfo", None)
    fixtures = [d.func for defs in (info.name2fixturedefs.values() if info is not None else ()) for d in defs]
    for function in [getattr(item, "function", None), *fixtures]:
        function = inspect.unwrap(function) if callable(function) else None
        if isinstance(function, types.FunctionType) and Path(function.__code__.co_filename).is_relative_to(TESTS) \
                and _starts_processes(function.__code__, function.__globals__, set()):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start processes `live` (see the module's docstring)."""
    for item in items:
        if is_live(item):
            item.add_marker(pytest.mark.live)


def k8s_validation() -> types.ModuleType:
    """kubernetes_validate (the test skips without it), its schema files parsed once per process: it reads and
    parses them on every `validate`, which was the longest part of the unit tests. The schemas are only read."""
    module = pytest.importorskip("kubernetes_validate")
    if not hasattr(module.utils.schema_contents, "cache_info"):
        module.utils.schema_contents = functools.cache(module.utils.schema_contents)
    return module


def jsonl(path: Path) -> list[dict]:
    """The complete lines of a JSON-lines file another process appends to (its last line may be half written),
    parsed; none when it does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def wait_for(condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.02,
             what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_for_async(condition: Callable[[], object], timeout: float = 15.0,  # noqa: ASYNC109 (as wait_for's)
                         interval: float = 0.01, what: str = "condition") -> object:
    """`wait_for` inside an event loop: polls without blocking it, so the code under test runs meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class BrokerProcess:
    """A `mapemesh broker serve` subprocess."""

    proc: subprocess.Popen[bytes]
    data: Path
    manifests: Path
    url: str

    @property
    def ingress(self) -> str:
        return self.url + "/default/default"

    @property
    def log_file(self) -> Path:
        return self.data / "eventlog.db"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop(self.proc, sig)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send `sig` to a process still running, wait up to `timeout` seconds, then kill it; its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_broker(data: Path, manifests: Path, *extra: str) -> BrokerProcess:
    """Start a broker on a free port and wait until it answers /healthz."""
    endpoints = data / "endpoints.json"
    if endpoints.exists():
        endpoints.unlink()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MAPEMESH_DATA", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapemesh", "--log-level", "warning", "broker", "serve", "--data", str(data),
         "--manifests", str(manifests), "--port", "0", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> str | None:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"broker exited with {proc.returncode}:\n{out}")
        try:
            url = json.loads(endpoints.read_text())["broker"]
        except (OSError, ValueError, KeyError):
            return None
        try:
            return url if httpx.get(url + "/healthz", timeout=1).status_code == 200 else None
        except httpx.HTTPError:
            return None

    url = wait_for(ready, what="the broker to start")
    return BrokerProcess(proc, data, manifests, str(url))


def copy_knative(root: Path, drop: str | tuple[str, ...] | None = None) -> Path:
    """A copy of the project's knative/ bundle (and the runtimes/ its kustomization includes) under `root`, laid
    out as in the repository; `drop` is a glob (or several) of manifests to leave out, of the kustomization too."""
    target = root / "knative"
    shutil.copytree(REPO / "knative", target, ignore=shutil.ignore_patterns("overlays", "platform"))
    shutil.copytree(REPO / "runtimes", root / "runtimes", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    if drop is not None:
        base = target / "base"
        gone = []
        for pattern in (drop,) if isinstance(drop, str) else drop:
            matched = [path.name for path in base.glob(pattern)]
            assert matched, f"nothing in knative/base matches {pattern!r}"
            gone += matched
        for name in gone:
            (base / name).unlink()
        kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
        kustomization["resources"] = [r for r in kustomization["resources"] if r not in gone]
        (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return target


KNATIVE_CONFIG = (REPO / "knative" / "base" / "broker.yaml", REPO / "knative" / "base" / "config-autoscaler.yaml",
                  REPO / "knative" / "base" / "config-features-eventing.yaml",
                  REPO / "runtimes" / "knative-serving-features.yaml")
"""The bundle's Broker and the Knative settings its Services and Triggers need (initial-scale 0, runtimeClassName,
retryAfterMax): a test's own manifests are checked as a cluster would check them, under the bundle's config."""


def copy_knative_config(manifests: Path) -> None:
    """Put the bundle's Broker and Knative ConfigMaps (`KNATIVE_CONFIG`) in `manifests`."""
    for path in KNATIVE_CONFIG:
        shutil.copy(path, manifests / path.name)


def add_resources(manifests: Path, *names: str) -> None:
    """List `names` in the kustomization of `manifests`, if it has one (kubectl apply -k reads only what it lists)."""
    path = manifests / "kustomization.yaml"
    if not path.exists():
        return
    kustomization = yaml.safe_load(path.read_text())
    kustomization["resources"] += [n for n in names if n not in kustomization["resources"]]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))


@pytest.fixture
def manifests_dir(tmp_path: Path) -> Path:
    """A copy of the project's knative/ manifests."""
    return copy_knative(tmp_path)


@pytest.fixture
def broker_factory(tmp_path: Path, manifests_dir: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start brokers on demand (same data directory each time); all are stopped at teardown."""
    started: list[BrokerProcess] = []

    def factory(*extra: str) -> BrokerProcess:
        b = start_broker(tmp_path / "data", manifests_dir, *extra)
        started.append(b)
        return b

    yield factory
    for b in started:
        b.stop(signal.SIGKILL)


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """One running broker with the project's manifests."""
    return broker_factory()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for a whole test module (for tests that only post and read)."""
    root = tmp_path_factory.mktemp("shared-broker")
    copy_knative(root)
    b = start_broker(root / "data", root / "knative")
    yield b
    b.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mqtt://127.0.0.1:PORT` of a mosquitto of this module's own (anonymous, no persistence, TCP_NODELAY)."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, and CI is set: install it (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    # set_tcp_nodelay: without it the broker's Nagle makes every request/response take ~40 ms instead of ~1 ms.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
    log = conf.with_name("mosquitto.log")
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)

    def accepting() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    try:
        wait_for(accepting, 10, what=f"mosquitto to accept connections on port {port}")
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class S3Location:
    """One moto server (`python -m moto.server`) on a free loopback port: a real S3 endpoint; `stop` and `start`
    make it a lost location and bring it back (empty: moto keeps nothing)."""

    def __init__(self, name: str, country: str, region: str = "", cost: float = 0.02):
        self.name, self.country, self.region, self.cost = name, country, region, cost
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"moto exited with {self.proc.returncode}"
            try:
                return httpx.get(self.endpoint + "/", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what=f"moto on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def as_location(self) -> dict:
        return {"name": self.name, "endpoint": self.endpoint, "country": self.country, "region": self.region,
                "cost_per_gb": self.cost}


def s3_locations(specs: list[tuple[str, str, str, float]]) -> list[S3Location]:
    """Moto servers for (name, country, region, cost) each; skipped (with the reason) when moto's server mode is
    not installed, except in CI."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("moto[server] is not installed, and CI is set")
        pytest.skip("moto[server] is not installed (pip install 'moto[server]')")
    return [S3Location(*spec) for spec in specs]


def signed(event, data: Path | None = None, name: str = "operator"):
    """`event` signed by identity `name` of the mesh whose data directory is `data` (default MAPEMESH_DATA), issued
    there with the authority when need be: what a component that may send commands does (`mapemesh.identity`)."""
    from mapemesh.identity import Authority, sign

    root = Path(data if data is not None else os.environ["MAPEMESH_DATA"]) / "identity"
    return sign(event, Authority(root).issue(name))
