"""Model serving: ONNX Runtime instances, the dynamic batcher, the model manager and the OIP gRPC endpoint."""
