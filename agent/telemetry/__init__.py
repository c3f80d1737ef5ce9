"""Device telemetry: the plugin inventory, one sampling tick per interval, /metrics, and samples on the wire."""
