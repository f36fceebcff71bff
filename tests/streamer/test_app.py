"""The Faust app's consumer settings (no broker needed: the consumer is built, not started)."""

from __future__ import annotations

from streamer.app import RecsysWorker
from streamer.settings import Settings


async def test_the_worker_consumer_asks_the_broker_to_hold_fetches_briefly() -> None:
    """Faust builds its consumer with a 1.5 s fetch wait; the worker's is the setting's
    (a fetch of idle topics held that long delays every live rating behind it)."""
    for wait in (50, 77):
        worker = RecsysWorker(Settings(fetch_max_wait_ms=wait))
        consumer = worker.app.consumer
        thread = consumer._new_consumer_thread()
        built = thread._create_worker_consumer(worker.app.transport)
        assert built._fetch_max_wait_ms == wait
