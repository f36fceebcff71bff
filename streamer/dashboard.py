"""The live dashboard: one page charting the workers' metrics, a user's current list and
an item's "more like this" list.

``recsys-online dashboard`` serves it (default port ``RECSYS_DASHBOARD_PORT``, 8080). It
reads only Redis, so it works with any number of workers and can run anywhere Redis is
reachable. The page polls a small JSON API once a second:

===========================  ==========================================================
``GET /api/metrics``         the shared metrics hash and each live worker's own hash
``GET /api/history``         the last snapshots (``?limit=N``, oldest first) for charts
``GET /api/recs/{user}``     that user's current list with reasons and titles (``?k=N``;
                             ``/api/recs?user=ID`` too: any id, ``.`` and ``..`` as well)
``GET /api/similar/{item}``  that item's "more like this" list, the same way
                             (``/api/similar?item=ID``)
``GET /api/users``           a few users that have a list, to pick from
``GET /healthz``             ``{"ok": true}`` while Redis answers
===========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
from importlib import resources

from aiohttp import web

from recsys_online.json_safe import json_safe
from streamer.client import (
    REDIS_ERRORS,
    AsyncRecommendationClient,
    RecommendationsUnavailable,
    glob_escaped,
)
from streamer.registry import TEXT_FIELDS
from streamer.settings import Settings
from streamer.web import advertised_url, start_site

CLIENT = web.AppKey("client", AsyncRecommendationClient)
_ROUTE = {"user": "recs", "item": "similar"}
SETTINGS = web.AppKey("settings", Settings)
USERS_SCAN_S = 0.25  # most of a cluster's SCAN for the users list


def numbers(fields: dict[str, str]) -> dict[str, float | str | None]:
    """Metric strings as JSON numbers where they are numbers (NaN and infinity: null);
    the text fields stay text (``partitions`` ``"3"`` is no number).

    >>> numbers({"rmse": "0.91", "lag": "3", "worker": "h:1", "ndcg_at_k": "nan"})
    {'rmse': 0.91, 'lag': 3.0, 'worker': 'h:1', 'ndcg_at_k': None}
    >>> numbers({"partitions": "3"})
    {'partitions': '3'}
    """
    out: dict[str, float | str | None] = {}
    for name, value in fields.items():
        if name in TEXT_FIELDS:
            out[name] = value
            continue
        try:
            x = float(value)
        except ValueError:
            out[name] = value
            continue
        out[name] = x if math.isfinite(x) else None
    return out


def _unavailable(exc: Exception) -> web.Response:
    return _json({"error": str(exc)}, status=503)


async def page(request: web.Request) -> web.Response:
    html = resources.files("streamer").joinpath("static/dashboard.html").read_text("utf-8")
    return web.Response(text=html, content_type="text/html")


async def api_metrics(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        shared = await client.metrics()
        workers = await client.worker_metrics()
    except RecommendationsUnavailable as exc:
        return _unavailable(exc)
    return _json(
        {"metrics": numbers(shared), "workers": {w: numbers(f) for w, f in workers.items()}}
    )


def _json(payload: object, status: int = 200) -> web.Response:
    """A JSON response that browsers can parse: NaN and infinities (damaged or foreign
    data in Redis; workers write null) become null."""
    return web.json_response(
        json_safe(payload), status=status, dumps=functools.partial(json.dumps, allow_nan=False)
    )


def _point(raw: bytes) -> dict | None:
    """One metrics snapshot of the history list; None for an entry that is not one:
    not a flat JSON object (a worker's snapshot holds numbers and text: one nested deeply
    failed the whole response), or without a finite time ``t`` (every chart's time axis
    went NaN). A damaged entry must not take the charts down.

    >>> _point(b'{"t": 1.5}'), _point(b"{broken"), _point(b"[1]"), _point(b"\\xff")
    ({'t': 1.5}, None, None, None)
    >>> _point(b'{"rmse": 0.5}'), _point(b'{"t": "now"}'), _point(b'{"t": true}')
    (None, None, None)
    >>> _point(b"[" * 100_000) is None  # nested too deeply for json
    True
    >>> _point(b'{"t": 1, "x": ' + b"[" * 490 + b"]" * 490 + b"}") is None
    True
    >>> _point(b'{"t": 1' + b"0" * 400 + b"}") is None  # (no float holds it)
    True
    """
    try:
        point = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(point, dict) or any(isinstance(v, dict | list) for v in point.values()):
        return None
    t = point.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float):
        return None
    try:
        finite = math.isfinite(t)
    except OverflowError:  # (an int past any float)
        return None
    return point if finite else None


async def api_history(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        limit = max(1, min(int(request.query.get("limit", "600")), 10_000))
    except ValueError:
        return _json({"error": "limit must be an integer"}, status=400)
    try:
        raw = await client.redis.lrange(client.key("metrics", "history"), 0, limit - 1)
    except REDIS_ERRORS as exc:
        return _unavailable(exc)
    points, seen = [], set()
    for point in filter(None, map(_point, reversed(raw))):
        # (a transaction run again after its reply was lost pushed the same point twice)
        mark = (str(point.get("worker")), str(point.get("t")))
        if mark not in seen:
            seen.add(mark)
            points.append(point)
    return _json({"points": points})


async def api_recs(request: web.Request) -> web.Response:
    return await _list(request, "user", request.app[CLIENT].recommend)


async def api_similar(request: web.Request) -> web.Response:
    return await _list(request, "item", request.app[CLIENT].similar)


async def _list(request: web.Request, subject: str, read) -> web.Response:
    """The list of the ``subject`` (``user`` or ``item``) the path names, or the query
    (``?user=`` / ``?item=``: any id, ``.`` and ``..`` too, which a URL path resolves
    away), read by the client's ``read`` with titles, ``?k=N`` items (default
    ``RECSYS_K``)."""
    name = request.match_info.get(subject, request.query.get(subject))
    if name is None:
        return _json({"error": f"name the {subject}: /api/{_ROUTE[subject]}?{subject}=ID"}, 400)
    try:
        k = int(request.query.get("k", str(request.app[SETTINGS].k)))
        recs = await read(name, k=k, titles=True)
    except ValueError as exc:
        return _json({"error": str(exc)}, status=400)
    except RecommendationsUnavailable as exc:
        return _unavailable(exc)
    return _json(
        {
            f"{subject}_id": getattr(recs, f"{subject}_id"),  # (as keyed: " u1 " is u1)
            "served_from": recs.served_from,
            "model_version": recs.model_version,
            "updated_at": recs.updated_at,
            "items": [r.__dict__ for r in recs.items],
        }
    )


async def api_users(request: web.Request) -> web.Response:
    """Up to ``n`` users with a list: a cheap, bounded SCAN, not a full key listing (the
    page asks every second while no user is picked)."""
    client = request.app[CLIENT]
    n = 12
    prefix = client.key("recs", "")
    match = glob_escaped(prefix) + "*"
    users: list[str] = []
    try:
        if client.cluster:  # every node's keys, one node after the other, until n users
            # (redis-py walks the nodes inside one iterator, which yields only matches:
            # bounded in time, what was found by then is the answer; the client finds the
            # cluster's nodes first, outside that time: a first call spent it all on that
            # on a busy machine, and found no user)
            await client.redis.ping()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(USERS_SCAN_S):
                    async for k in client.redis.scan_iter(match=match, count=500):
                        users.append(k.decode(errors="replace")[len(prefix) :])
                        if len(users) >= n:
                            break
        else:
            cursor = 0
            for _ in range(20):  # at most 20 SCAN calls of ~500 keys
                cursor, keys = await client.redis.scan(cursor, match=match, count=500)
                users += [k.decode(errors="replace")[len(prefix) :] for k in keys]
                if cursor == 0 or len(users) >= n:
                    break
    except (*REDIS_ERRORS, RecommendationsUnavailable) as exc:
        return _unavailable(exc)
    return _json({"users": sorted(users)[:n]})


async def health(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        await client.redis.ping()
    except REDIS_ERRORS as exc:
        return _unavailable(exc)
    return _json({"ok": True})


def application(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[CLIENT] = AsyncRecommendationClient(
        settings.redis_url, settings.key_prefix, cluster=settings.redis_cluster
    )

    async def close(app: web.Application) -> None:
        await app[CLIENT].aclose()

    app.on_cleanup.append(close)
    app.router.add_get("/", page)
    app.router.add_get("/api/metrics", api_metrics)
    app.router.add_get("/api/history", api_history)
    # (Any id: aiohttp's default pattern refuses braces, which ids may hold.)
    app.router.add_get("/api/recs/{user:.+}", api_recs)
    app.router.add_get("/api/similar/{item:.+}", api_similar)
    app.router.add_get("/api/recs", api_recs)  # ?user=ID (what the page asks)
    app.router.add_get("/api/similar", api_similar)  # ?item=ID
    app.router.add_get("/api/users", api_users)
    app.router.add_get("/healthz", health)
    return app


async def serve(settings: Settings, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start the dashboard; returns its runner (``await runner.cleanup()`` stops it) and URL."""
    runner, bound = await start_site(application(settings), host, port, fallback=False)
    return runner, advertised_url("127.0.0.1" if host in ("0.0.0.0", "") else host, bound, "/")
