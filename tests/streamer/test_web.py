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
