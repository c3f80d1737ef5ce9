"""Device plugins: one small interface (base.py), plain dataclasses out, no imports of ours."""
