"""The FPGABitstream knob in `mapemesh up` on a simulated ZCU102: the function that uses the FPGA is drained by the
local host before the fabric is written (its running request finishes, one sent meanwhile waits and is served
after), then released."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from mapemesh.node_shim import simulate
from mapemesh.runtimes.vaccel_hook import FPGA_LABEL

from .conftest import wait_for
from .test_serving import service, start_mesh

FIRMWARE = "sys/class/fpga_manager/fpga0/firmware"


def test_a_reconfiguration_waits_for_the_fpga_function_and_fails_no_request(tmp_path: Path) -> None:
    sysfs = simulate.create(tmp_path / "sysfs", "fpga")
    fft = service("fft", timeout=30)
    fft["metadata"]["labels"] = {FPGA_LABEL: "rp0"}
    mesh = start_mesh(tmp_path / "project", fft, service("web"), shim=["--node", "zcu102", "--sysfs-root", str(sysfs)])
    try:
        shim = wait_for(lambda: json.loads((mesh.data / "endpoints.json").read_text()).get("node-shim"),
                        what="the node shim")
        token = (mesh.data / "node-shim.token").read_text().strip()
        api = httpx.Client(base_url=shim, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        options = api.get("/knobs/FPGABitstream").json()["options"]
        assert options["functions"] == {"default/fft": {"service": "default/fft", "region": "rp0"}}

        answers: dict[str, httpx.Response] = {}
        running = threading.Thread(target=lambda: answers.update(
            running=mesh.post("fft", "slow", timeout=60, seconds="2")))
        running.start()
        in_flight = lambda: httpx.get(f"{mesh.serving}/status").json()["functions"]["default/fft"]["in_flight"]  # noqa: E731
        wait_for(lambda: in_flight() == 1, what="a request running in the FPGA function")

        load = threading.Thread(target=lambda: answers.update(load=api.post(
            "/knobs/FPGABitstream", json={"command": "load", "bitstream": "conv2d.bit.bin"})))
        load.start()
        wait_for(lambda: httpx.get(f"{mesh.serving}/status").json()["functions"]["default/fft"]["held"],
                 what="the drain to begin")
        waiting = threading.Thread(target=lambda: answers.update(waiting=mesh.post("fft", timeout=60)))
        waiting.start()
        for thread in (running, load, waiting):
            thread.join(90)

        assert answers["running"].status_code == 200 and answers["waiting"].status_code == 200  # none failed
        assert answers["load"].status_code == 200, answers["load"].text
        after = answers["load"].json()["after"]
        assert after["last_reconfiguration"]["drained"] == ["default/fft"]
        finished = float(answers["running"].headers["ce-started"])  # the slow function's time as it answered
        assert (sysfs / FIRMWARE).stat().st_mtime >= finished  # written once the running request was done
        assert float(answers["waiting"].headers["ce-started"]) >= (sysfs / FIRMWARE).stat().st_mtime
        assert (sysfs / FIRMWARE).read_text().strip() == "conv2d.bit.bin"
        api.close()
    finally:
        mesh.proc.terminate()
        mesh.proc.wait(20)
