"""The wire contract: .proto sources, checked-in generated modules, tiny wire helpers."""
