"""xpud: node-level accelerator agent and control plane."""

__version__ = "0.1.0"
