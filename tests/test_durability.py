"""An event that got 202 survives SIGKILL of the broker: nothing accepted is lost."""

from __future__ import annotations

import signal
import threading
import uuid

import httpx

from mapemesh.eventing.log import read_all


def test_sigkill_during_a_stream_of_posts_loses_no_accepted_event(broker_factory):
    broker = broker_factory()
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                event_id = str(uuid.uuid4())
                headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": "/durability",
                           "ce-type": "com.example.durability", "content-type": "application/json"}
                try:
                    r = http.post(broker.ingress, headers=headers, content=b'{"payload": "' + b"x" * 900 + b'"}')
                except httpx.HTTPError:
                    return  # the broker is gone
                if r.status_code == 202:
                    with lock:
                        accepted.append(event_id)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    # Kill once a good number of events are in flight and acknowledged.
    deadline = threading.Event()
    while len(accepted) < 300 and not deadline.wait(0.01):
        pass
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(accepted) >= 300

    restarted = broker_factory()  # same data directory
    ids = {e.event.id for e in read_all(restarted.log_file)}
    missing = [i for i in accepted if i not in ids]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted events were lost"

    # The restarted broker keeps appending after the recovered events.
    before = max(e.seq for e in read_all(restarted.log_file))
    headers = {"ce-specversion": "1.0", "ce-id": "after-restart", "ce-source": "/d", "ce-type": "t"}
    assert httpx.post(restarted.ingress, headers=headers).status_code == 202
    (after,) = [e for e in read_all(restarted.log_file) if e.event.id == "after-restart"]
    assert after.seq > before
