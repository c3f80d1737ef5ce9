"""The /metrics HTTP endpoint of the agent and the controller: plain HTTP, or HTTPS with the process's own
certificate (--metrics-tls), and with a CA a client certificate signed by it is required (a Prometheus with
`xpud certs issue --user prometheus --role viewer`)."""

from __future__ import annotations

from typing import Any

import prometheus_client

from .credentials import ServerCertificates, TlsFiles

# no `_created` series next to each counter and histogram: a timestamp per series that dashboards never use and
# that doubles what every scrape carries (both /metrics endpoints go through this module)
prometheus_client.disable_created_metrics()


class MetricsServer:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.registry = registry
        self._server: Any = None

    def serve(self, port: int, host: str, tls: TlsFiles | None = None) -> int:
        """Start serving; returns the bound port (useful with port 0). CredentialsError when the TLS files cannot
        be used, OSError when it cannot bind."""
        secure: dict[str, Any] = {}
        if tls is not None:
            ServerCertificates.configuration(tls)  # the files named in the error, before anything listens
            secure = {"certfile": tls.cert, "keyfile": tls.key, "client_cafile": tls.ca,
                      "client_auth_required": tls.ca is not None}
        server, _thread = prometheus_client.start_http_server(port, addr=host, registry=self.registry, **secure)
        self._server = server
        return int(server.server_port)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
