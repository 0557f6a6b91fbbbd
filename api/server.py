"""Running the API on uvicorn (`aforo serve`)."""

from __future__ import annotations

import uvicorn

import config
from api.app import create_app
from api.services import ApiOptions
from observe.logs import configure as configure_logging
from sinks.kafka import ensure_topics


def serve(host: str, port: int, options: ApiOptions) -> None:
    """One process, one event loop: the handlers only wait (on the broker, on Postgres), and the
    CPU-heavy parts (orjson, librdkafka) release the GIL or are short. Run more processes behind
    a load balancer to scale out; they share nothing but Kafka and Postgres."""
    settings = config.load()
    configure_logging(settings, service=True)
    ensure_topics(settings)  # fail fast, with the broker's error, before accepting traffic
    # log_config=None: uvicorn's records go through the process's logging (observe.logs); its own
    # access lines are replaced by the structured ones of api.observe
    uvicorn.run(create_app(settings, options), host=host, port=port, proxy_headers=True,
                log_config=None, access_log=False, timeout_graceful_shutdown=10)
