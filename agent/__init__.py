"""The node agent: telemetry of the local devices, the inference endpoint, and the link to the controller.

Subpackages: ``telemetry`` (plugins, sampling tick, metrics), ``serving`` (models and the OIP endpoint),
``link`` (controller stream, desired-state reconciler, artifact cache). ``daemon`` wires them together.
"""
