"""An OTLP/HTTP trace sink for the benchmark: accepts at once, counts what it got.

``python -m tests.bench.otlp_sink --port 0`` prints ``LISTENING <port>``. ``POST /v1/traces``
(protobuf, gzip undone by aiohttp) is answered with an empty ``ExportTraceServiceResponse`` and
its spans counted; ``GET /stats`` answers ``{"posts": n, "spans": n}``. It runs on the load core,
so the gateway's CPU figures hold the export (encoding, gzip, the HTTP call) and nothing of the
receiving side.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_EMPTY_RESPONSE = b""  # an ExportTraceServiceResponse with no field set


class Counts:
    def __init__(self) -> None:
        self.posts = 0
        self.spans = 0

    async def traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        self.posts += 1
        self.spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return web.Response(body=_EMPTY_RESPONSE, content_type="application/x-protobuf")

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"posts": self.posts, "spans": self.spans})


async def serve(port: int) -> None:
    counts = Counts()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", counts.traces)
    app.router.add_get("/stats", counts.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
