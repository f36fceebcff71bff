"""A worker's small HTTP server: metrics, liveness and readiness."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from streamer.web import PROMETHEUS_CONTENT_TYPE, MetricsServer


async def test_readyz_says_503_and_why_until_the_worker_is_in_service() -> None:
    state = {"ready": False}

    def readiness() -> tuple[bool, dict]:
        waiting = [] if state["ready"] else ["the catalog"]
        return state["ready"], {"ready": state["ready"], "waiting_for": waiting}

    server = MetricsServer(lambda: "recsys_events_total 3\n", readiness)
    async with TestClient(TestServer(server.application())) as http:
        answer = await http.get("/readyz")
        assert answer.status == 503
        assert await answer.json() == {"ready": False, "waiting_for": ["the catalog"]}
        health = await http.get("/healthz")  # alive all along
        assert health.status == 200 and await health.json() == {"ok": True}
        state["ready"] = True
        answer = await http.get("/readyz")
        assert answer.status == 200 and (await answer.json())["waiting_for"] == []
        metrics = await http.get("/metrics")
        assert metrics.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
        assert await metrics.text() == "recsys_events_total 3\n"


async def test_the_dashboards_users_are_those_of_its_own_prefix_taken_literally(
    redis_url: str, redis_key_prefix: str
) -> None:
    """A key prefix holding glob characters (``[eu]*``) matched other keys in the SCAN
    for the users list, and not its own; it is taken literally."""
    import redis

    from streamer.dashboard import application
    from streamer.settings import Settings

    prefix = redis_key_prefix + "shop[eu]*:"
    other = redis_key_prefix + "shope:"  # what the unescaped pattern also matched
    r = redis.Redis.from_url(redis_url)
    try:
        r.set(prefix + "recs:u1", '{"items": []}')
        r.set(other + "recs:x9", '{"items": []}')
        settings = Settings(redis_url=redis_url, key_prefix=prefix)
        async with TestClient(TestServer(application(settings))) as http:
            answer = await http.get("/api/users")
            assert answer.status == 200 and await answer.json() == {"users": ["u1"]}
    finally:
        r.close()


async def test_the_dashboard_survives_damaged_history_and_serves_any_id(
    redis_url: str, redis_key_prefix: str
) -> None:
    """A history entry nested too deeply to send back answered 500, and one without a
    time collapsed every chart: both are skipped. ``partitions`` stays text ("3" read as
    the number 3.0 for a worker of one partition). Ids ``.`` and ``..``, which a URL path
    resolves away, are served by ``?user=`` and ``?item=``."""
    import json
    import time

    import redis

    from recsys_online.recommender import Recommendation
    from streamer.dashboard import application
    from streamer.settings import Settings
    from streamer.sink import list_document

    settings = Settings(redis_url=redis_url, key_prefix=redis_key_prefix)
    r = redis.Redis.from_url(redis_url)
    try:
        history = settings.key("metrics", "history")
        deep = '{"t": 3, "x": ' + "[" * 600 + "]" * 600 + "}"
        for entry in ('{"t": 1, "rmse": 0.9}', deep, '{"rmse": 0.5}', '{"t": 2, "rmse": 0.8}'):
            r.lpush(history, entry)
        r.hset(settings.key("metrics", "worker", "w1"), mapping={"events": "5", "partitions": "3"})
        r.zadd(settings.key("metrics", "workers"), {"w1": time.time()})
        listed = [Recommendation("m2", 1.5, "popular", "pop", None)]
        for user in (".", ".."):
            r.set(settings.key("recs", user), list_document(user, listed, 1, time.time()))
        async with TestClient(TestServer(application(settings))) as http:
            answer = await http.get("/api/history")
            assert answer.status == 200
            assert [p["t"] for p in (await answer.json())["points"]] == [1, 2]
            workers = (await (await http.get("/api/metrics")).json())["workers"]
            assert workers["w1"] == {"events": 5.0, "partitions": "3"}
            for user in (".", ".."):
                answer = await http.get("/api/recs", params={"user": user})
                recs = await answer.json()
                assert answer.status == 200 and recs["user_id"] == user, recs
                assert [it["item_id"] for it in recs["items"]] == ["m2"]
            answer = await http.get("/api/similar", params={"item": ".."})
            more = await answer.json()  # (no list and no popular one under this prefix)
            assert answer.status == 200 and more["item_id"] == ".." and more["items"] == []
            answer = await http.get("/api/recs")
            assert answer.status == 400 and "?user=" in (await answer.json())["error"]
        json.loads(deep)  # (the entry itself is valid JSON)
    finally:
        for key in r.scan_iter(redis_key_prefix + "*"):
            r.delete(key)
        r.close()


def test_the_dashboard_never_refills_a_box_someone_is_typing_in() -> None:
    """The page re-shows its user and item every second: the user box was refilled each
    time, erasing what one typed (the item box already waited while focused)."""
    import re
    from pathlib import Path

    import streamer

    page = (Path(streamer.__file__).parent / "static" / "dashboard.html").read_text()
    for box in ("user", "item"):
        refills = re.findall(rf'el\("{box}"\)\.value = ', page)
        guarded = re.findall(
            rf'if \(document\.activeElement !== el\("{box}"\)\) el\("{box}"\)\.value = ', page
        )
        assert refills and len(guarded) == len(refills), box
