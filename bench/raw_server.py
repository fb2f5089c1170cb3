"""The ingress baseline: a bare aiohttp endpoint that reads the body and answers 202, storing nothing."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

from mapemesh.aio import run


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202)


async def serve(host: str, port: int) -> None:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    print(f"http://{host}:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    a = parser.parse_args()
    run(serve(a.host, a.port))
