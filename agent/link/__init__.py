"""The link to the controller: the AgentLink stream, the reconciler of desired models, the artifact cache."""

# gRPC options of the agent's channel to the controller (keepalive, large desired states)
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 << 20),
]
