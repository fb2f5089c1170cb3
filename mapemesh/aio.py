"""Running asyncio programs the same way everywhere."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop where it is installed (faster sockets), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def stop_signals() -> asyncio.Event:
    """An event SIGINT or SIGTERM sets, from now on (call it first: a signal during start-up, a Pod deleted while
    it registers, then stops it cleanly instead of killing it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_stopped(stop: asyncio.Event | None = None) -> None:
    """Wait for SIGINT or SIGTERM (Ctrl-C, or a service manager stopping us); `stop` from `stop_signals` when the
    handlers were installed before."""
    stop = stop or stop_signals()
    loop = asyncio.get_running_loop()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
