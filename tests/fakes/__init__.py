"""Test doubles for vendor libraries (a scenario-driven fake ``pynvml``)."""

from .fake_pynvml import FakeHandle, FakeNvml, load_scenario

__all__ = ["FakeHandle", "FakeNvml", "load_scenario"]
