"""The control plane: global pool, scheduler, router, store (arrives with the control-plane issue)."""
