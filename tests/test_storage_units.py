"""The storage gateway's parts without servers: the erasure code, sealing, the locations file, and reads that ask
the quickest locations first and hedge (a fake `Stores`)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os

import pytest
import yaml

from mapemesh.state import open_store
from mapemesh.storage import codec
from mapemesh.storage.gateway import ECStore
from mapemesh.storage.locations import Layout, LayoutError, LocationError, load
from mapemesh.storage.sealing import KeyFileError, Sealer, SealError


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 999, 1000, 65537])
@pytest.mark.parametrize(("k", "m"), [(1, 0), (1, 2), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_any_k_fragments_rebuild_the_object(size, k, m):
    data = os.urandom(size)
    fragments, padlen = codec.encode(data, k, m)
    assert sorted(fragments) == list(range(k + m)) and len({len(f) for f in fragments.values()}) == 1
    for chosen in itertools.combinations(range(k + m), k):
        assert codec.decode({i: fragments[i] for i in chosen}, k, padlen) == data
    with pytest.raises(ValueError, match="cannot rebuild"):
        codec.decode({i: fragments[i] for i in range(k - 1)}, k, padlen)


def test_parity_added_later_is_the_parity_a_wider_code_has():
    data = os.urandom(10_001)
    narrow, padlen = codec.encode(data, 3, 1)
    wide, _ = codec.encode(data, 3, 3)
    assert {i: narrow[i] for i in range(4)} == {i: wide[i] for i in range(4)}  # 3+1 is a prefix of 3+3
    assert codec.extend({1: narrow[1], 2: narrow[2], 3: narrow[3]}, 3, padlen, [4, 5]) == {4: wide[4], 5: wide[5]}


def test_sealing_binds_the_object_and_refuses_another_key_or_changed_bytes(tmp_path):
    key = os.urandom(32)
    for text in (key, key.hex().encode() + b"\n", base64.b64encode(key) + b"\n"):
        (tmp_path / "k").write_bytes(text)
        assert Sealer.from_file(tmp_path / "k").key == key
    (tmp_path / "bad").write_text("short")
    with pytest.raises(KeyFileError, match="32 bytes"):
        Sealer.from_file(tmp_path / "bad")
    sealer = Sealer(key)
    blob, envelope = sealer.seal(b"the plain bytes", b"b/k")
    assert b"the plain bytes" not in blob and sealer.open(blob, envelope, b"b/k") == b"the plain bytes"
    with pytest.raises(SealError, match="changed"):
        sealer.open(blob, envelope, b"b/other")  # the envelope belongs to another object
    with pytest.raises(SealError, match="changed"):
        sealer.open(blob[:-1] + bytes([blob[-1] ^ 1]), envelope, b"b/k")
    with pytest.raises(SealError, match="this gateway's key"):
        Sealer(os.urandom(32)).open(blob, envelope, b"b/k")


def test_a_locations_file_is_checked_and_names_the_field(tmp_path):
    good = {"locations": [{"name": "a", "endpoint": "http://127.0.0.1:1", "country": "ie"},
                          {"name": "b", "endpoint": "http://127.0.0.1:2", "country": "DE"}],
            "default_policy": {"k": 1, "m": 1}, "countries": {"10.0.0.0/8": "ie"}}
    layout = Layout.parse(good)
    assert layout.locations["a"].country == "IE" and layout.country_of("10.1.2.3") == "IE"
    assert layout.country_of("192.0.2.1") == "ZZ" and layout.country_of("not an address") == "ZZ"
    for change, message in (
            ({"locations": []}, "at least one location"),
            ({"default_policy": {"k": 2, "m": 1}}, r"k\+m <= 2"),
            ({"countries": {"nowhere": "IE"}}, "not an IP network"),
            ({"encryption": {"key": "x"}}, "key_file"),
            ({"colour": "blue"}, "unknown field"),
            ({"locations": [{"name": "A", "endpoint": "http://x", "country": "IE"}]}, "lowercase"),
            ({"locations": [{"name": "a", "endpoint": "ftp://x", "country": "IE"}]}, "http"),
            ({"locations": [{"name": "a", "endpoint": "http://x"}]}, "country: required")):
        with pytest.raises(LayoutError, match=message):
            Layout.parse({**good, **change})
    (tmp_path / "l.yaml").write_text(yaml.safe_dump({**good, "encryption": {"key_file": "missing.key"}}))
    with pytest.raises(LayoutError, match=r"missing\.key"):
        load(tmp_path / "l.yaml")
    (tmp_path / "missing.key").write_bytes(os.urandom(32))
    assert load(tmp_path / "l.yaml").key_file == str(tmp_path / "missing.key")  # relative to the file


class _Slow:
    """A fake `Stores`: each location answers after its delay, or fails."""

    def __init__(self, delays: dict[str, float | None]):
        self.delays, self.asked, self.held = delays, [], {}

    async def put(self, location: str, key: str, data: bytes) -> None:
        self.held[(location, key)] = data

    async def get(self, location: str, key: str) -> bytes:
        self.asked.append(location)
        delay = self.delays[location]
        if delay is None:
            raise LocationError(f"location {location}: down")
        await asyncio.sleep(delay)
        return self.held[(location, key)]

    async def delete(self, location: str, keys: list[str]) -> None:
        for key in keys:
            self.held.pop((location, key), None)


def test_a_read_asks_k_locations_and_hedges_when_one_is_slow_or_down(tmp_path):
    layout = Layout.parse({"locations": [{"name": n, "endpoint": "http://127.0.0.1:1", "country": "IE"}
                                         for n in ("a", "b", "c", "d")], "default_policy": {"k": 3, "m": 1}})
    stores = _Slow({"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0})
    ec = ECStore(open_store("sqlite:", data=tmp_path), layout, stores, tmp_path)  # type: ignore[arg-type]

    async def scenario() -> None:
        await ec.create_bucket("bkt")
        body = os.urandom(30_000)
        await ec.put_object("bkt", "k", body)
        stores.asked.clear()
        assert (await ec.get_object("bkt", "k"))[1] == body
        assert sorted(stores.asked) == ["a", "b", "c"]  # a healthy read: k fragments, not k+m
        stores.delays["b"] = None  # down: the fourth is asked at once, and b is asked last from now on
        stores.asked.clear()
        assert (await ec.get_object("bkt", "k"))[1] == body
        assert sorted(stores.asked) == ["a", "b", "c", "d"]
        stores.asked.clear()
        assert (await ec.get_object("bkt", "k"))[1] == body and sorted(stores.asked) == ["a", "c", "d"]
        stores.delays.update(b=0.0, c=5.0)  # c hangs: after the hedge delay the others answer instead
        ec.shunned.clear()
        stores.asked.clear()
        started = asyncio.get_running_loop().time()
        assert (await ec.get_object("bkt", "k"))[1] == body
        assert asyncio.get_running_loop().time() - started < 2.0 and "c" in stores.asked

    asyncio.run(scenario())
