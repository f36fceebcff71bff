"""Small HTTP servers on aiohttp (which Faust already brings): a worker's ``/metrics``.

Each worker serves Prometheus' text format at ``http://<host>:<RECSYS_WEB_PORT>/metrics``,
``/healthz`` (200 while its event loop answers: a liveness probe) and ``/readyz`` (200
once it is in service, 503 with what it waits for before: a readiness probe). When the
port is taken (two workers on one machine) the worker takes a free one instead, says so
in its log, and publishes the address it got in Redis (``metrics_url`` in
``{prefix}metrics:worker:{id}``), where ``recsys-online metrics`` and the dashboard find
it.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def start_site(
    app: web.Application, host: str, port: int, fallback: bool = True
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); returns the runner and the port.

    With ``fallback`` (a worker's metrics), a port already in use falls back to a free
    one rather than stopping the caller; without (a port a person asked for), it is an
    ``OSError``.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0 or not fallback:
            await runner.cleanup()
            raise
        log.warning("port %d is in use; serving on a free port instead", port)
        site = web.TCPSite(runner, host, 0)
        await site.start()
    return runner, runner.addresses[-1][1]


def advertised_url(host: str, port: int, path: str) -> str:
    """The address others use: the machine's name when listening on every interface.

    >>> advertised_url("127.0.0.1", 6066, "/metrics"), advertised_url("::1", 8080, "/")
    ('http://127.0.0.1:6066/metrics', 'http://[::1]:8080/')
    """
    name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    if ":" in name:  # an IPv6 address goes in brackets
        name = f"[{name}]"
    return f"http://{name}:{port}{path}"


class MetricsServer:
    """``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz`` for one worker process.

    ``readiness`` returns whether the worker is in service, and a JSON-able account of
    it (what it still waits for).
    """

    def __init__(
        self,
        render: Callable[[], str],
        readiness: Callable[[], tuple[bool, dict]] = lambda: (True, {"ready": True}),
    ) -> None:
        self.render = render
        self.readiness = readiness
        self.url = ""
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._ready)
        return app

    async def start(self, host: str, port: int) -> str:
        self._runner, bound = await start_site(self.application(), host, port)
        self.url = advertised_url(host, bound, "/metrics")
        log.info("Prometheus metrics at %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.render().encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready, account = self.readiness()
        return web.json_response(account, status=200 if ready else 503)
