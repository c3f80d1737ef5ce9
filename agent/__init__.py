"""The node agent: inventory, telemetry, metrics, (next) serving and the controller link."""
