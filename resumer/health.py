"""/metrics for Prometheus, /healthz for liveness and readiness.

`/healthz` answers 200 while the consumer loop turns and owns partitions,
and 503 otherwise: a resumer that lost its group or hangs gets restarted
by its orchestrator, and a starting one receives no traffic before its
first assignment.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from resumer.worker import Health

logger = logging.getLogger(__name__)


# Every interface: Prometheus and the orchestrator's probes come from outside
# the container.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


def serve(health: Health, port: int, host: str = ALL_INTERFACES) -> ThreadingHTTPServer:
    """Starts the endpoint server in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = health.live and health.assigned
                body = {"live": health.live, "ready": health.assigned}
                self._reply(200 if ok else 503, json.dumps(body).encode())
            else:
                self._reply(404, b'{"error": "not found"}')

        def _reply(
            self, status: int, body: bytes, kind: str = "application/json"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every few seconds would drown the log at INFO.
            logger.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(
        target=server.serve_forever, name="pausewire-http", daemon=True
    ).start()
    logger.info("Serving /metrics and /healthz on port %d", port)
    return server
