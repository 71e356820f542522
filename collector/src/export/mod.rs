//! Exporters: Prometheus /metrics, the JSON API and CLI tables.
