"""The local host's drain (what the FPGABitstream knob asks for before it reconfigures the fabric): a held Service
takes no process for new requests, they wait (none fails), and the drain ends once its processes finished what they
had; a drain that does not end in time releases the Services again. Unit level: stand-in processes, no fork."""

from __future__ import annotations

import asyncio
import shutil
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mapemesh.eventing.cloudevent import CloudEvent
from mapemesh.runtimes.vaccel_hook import FPGA_LABEL, fpga_functions
from mapemesh.serving.activator import Instance, Revision
from mapemesh.serving.host import LocalHost
from mapemesh.serving.spec import ServiceSpec

from .conftest import KNATIVE_CONFIG, wait_for_async


class Process(Instance):
    """A function process that is not one: killing it only marks it gone."""

    def kill(self, reason: str) -> None:
        self.alive = False
        self.killed = reason


class Zygote:
    """Records each process the revision asks for; starts none."""

    def __init__(self) -> None:
        self.spawned = 0
        self.never = asyncio.Event()

    async def spawn(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> Any:
        self.spawned += 1
        await self.never.wait()


def spec(name: str = "fft", region: str | None = "rp0") -> ServiceSpec:
    return ServiceSpec(namespace="default", name=name, source="fn.py", target="handle", env={}, min_scale=0,
                       max_scale=2, initial_scale=0, target_concurrency=1, window_s=1.0, retention_s=0.0,
                       container_concurrency=1, timeout_s=30.0, runtime_class=None, image=None, origin="test",
                       labels={FPGA_LABEL: region} if region else {})


def busy_revision(zygote: Zygote) -> tuple[Revision, Process, asyncio.Future[Any]]:
    """A revision with one process that runs one request."""
    rev = Revision(spec(), zygote, Path("."))  # type: ignore[arg-type]
    inst = Process(pid=-1, writer=types.SimpleNamespace(write=lambda _: None))  # type: ignore[arg-type]
    running: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    inst.in_flight[0] = running
    rev.instances.append(inst)
    return rev, inst, running


def finish(rev: Revision, inst: Process, running: asyncio.Future[Any]) -> None:
    """The process answers its request (what the revision's reader does with an answer)."""
    inst.in_flight.pop(0)
    running.set_result(({"ok": True, "attrs": None}, b""))
    rev._retire_if_drained(inst)
    rev.dispatch()


def test_fpga_functions_are_the_labelled_services() -> None:
    services = {"default/fft": spec(), "default/web": spec("web", None), "default/detect": spec("detect", "fabric")}
    assert fpga_functions(services) == {"default/fft": {"service": "default/fft", "region": "rp0"},
                                        "default/detect": {"service": "default/detect", "region": "fabric"}}
    # Two Services of one name in two namespaces are two functions to drain, not one.
    edge = replace(spec(), namespace="edge")
    assert set(fpga_functions({"default/fft": spec(), "edge/fft": edge})) == {"default/fft", "edge/fft"}


def test_drain_waits_for_the_running_request_and_holds_new_ones() -> None:
    async def main() -> None:
        zygote = Zygote()
        rev, inst, running = busy_revision(zygote)
        host = types.SimpleNamespace(revisions={rev.spec.key: rev})
        drain = asyncio.create_task(LocalHost.drain(host, [rev.spec.key], 30.0))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let the drain begin
        assert rev.held and not drain.done() and inst.draining
        waiting = asyncio.create_task(rev.invoke(CloudEvent({"specversion": "1.0", "id": "1", "source": "/t",
                                                             "type": "t"})))
        await wait_for_async(lambda: rev.queue, what="the new request to queue")
        assert zygote.spawned == 0  # no process starts for it while held
        finish(rev, inst, running)
        await drain
        assert rev.idle and inst.killed == "was drained" and not waiting.done()
        await LocalHost.release(host, [rev.spec.key])  # type: ignore[arg-type]
        await wait_for_async(lambda: zygote.spawned == 1, what="a process for the request that waited")
        assert not rev.held and not waiting.done()  # it is served, not failed
        rev.stop()
        with pytest.raises(Exception, match="stopped"):
            await waiting

    asyncio.run(main())


def test_a_drain_that_does_not_end_in_time_releases_the_services() -> None:
    async def main() -> None:
        rev, inst, _running = busy_revision(Zygote())
        host = types.SimpleNamespace(revisions={rev.spec.key: rev})
        with pytest.raises(TimeoutError, match="default/fft"):
            await LocalHost.drain(host, [rev.spec.key], 0.3)  # type: ignore[arg-type]
        assert not rev.held and inst.alive  # its request goes on; the reconfiguration did not happen
        rev.stop()

    asyncio.run(main())


def test_a_cancelled_drain_releases_the_services() -> None:
    # The shim's HostDrainer cancels a drain that outlives its wait: nothing may stay held after it.
    async def main() -> None:
        rev, inst, _running = busy_revision(Zygote())
        host = types.SimpleNamespace(revisions={rev.spec.key: rev})
        drain = asyncio.create_task(LocalHost.drain(host, [rev.spec.key], 30.0))  # type: ignore[arg-type]
        await wait_for_async(lambda: rev.held, what="the drain to begin")
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        assert not rev.held and inst.alive
        rev.stop()

    asyncio.run(main())


class PreparingZygote(Zygote):
    """A fork server that imports nothing and starts no process (what `LocalHost.reload` asks of one)."""

    async def prepare(self, spec: ServiceSpec, base: Path, env: dict[str, str]) -> None:
        return None


def test_a_revision_replaced_during_a_drain_comes_up_held(tmp_path: Path) -> None:
    import yaml

    from mapemesh.eventing.brokers import BrokerRegistry

    from .test_serving import service

    manifests = tmp_path / "knative"
    manifests.mkdir()
    (tmp_path / "fns").mkdir()
    (tmp_path / "fns" / "echo.py").write_text("def echo(event):\n    return event\n")
    fft = service("fft")
    fft["metadata"]["labels"] = {FPGA_LABEL: "rp0"}
    (manifests / "fft.yaml").write_text(yaml.safe_dump(fft))
    for config in KNATIVE_CONFIG:  # the settings the test Service needs (initial-scale 0), as a cluster's
        shutil.copy(config, manifests / config.name)

    async def main() -> None:
        registry = BrokerRegistry(manifests)
        host = LocalHost(registry, min_window_s=1.0)
        host.zygote = PreparingZygote()  # type: ignore[assignment]
        host.reload()
        old = host.revisions["default/fft"]
        await host.drain(["default/fft"], 5.0)
        assert old.held
        # The manifest changes while the fabric is reconfigured: the new revision must not serve yet.
        fft["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "MODE", "value": "fast"})
        (manifests / "fft.yaml").write_text(yaml.safe_dump(fft))
        registry._fingerprint = None  # re-read now, whatever the file's mtime resolution
        assert registry.reload()
        new = host.revisions["default/fft"]
        assert new is not old and new.held and new.idle
        answer = asyncio.create_task(new.invoke(CloudEvent({"specversion": "1.0", "id": "1", "source": "/t",
                                                            "type": "t"})))
        await wait_for_async(lambda: new.queue, what="the request to wait")
        assert host.zygote.spawned == 0  # type: ignore[attr-defined]
        await host.release(["default/fft"])
        assert not new.held
        await wait_for_async(lambda: host.zygote.spawned == 1,  # type: ignore[attr-defined]
                             what="a process for the request that waited")
        new.stop()
        with pytest.raises(Exception, match="stopped"):
            await answer

    asyncio.run(main())
