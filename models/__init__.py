"""The demo model repository that `make run` / `xpud up` serve (an iris classifier; see build.py)."""
