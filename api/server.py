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
    app = create_app(settings, options)
    # log_config=None: uvicorn's records go through the process's logging (observe.logs); its own
    # access lines are replaced by the structured ones of api.observe
    _Server(uvicorn.Config(app, host=host, port=port, proxy_headers=True, log_config=None,
                           access_log=False, timeout_graceful_shutdown=10)).run()


class _Server(uvicorn.Server):
    """Ends the live event streams as soon as a shutdown begins (SIGTERM, Ctrl-C): each client is
    told `event: closing` and reconnects later, instead of holding the graceful shutdown to its
    timeout. (uvicorn re-raises the signal once the server has stopped.)"""

    def handle_exit(self, sig, frame) -> None:
        services = getattr(self.config.app.state, "services", None)
        if services is not None:
            services.live.end_streams()
        super().handle_exit(sig, frame)
