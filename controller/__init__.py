"""The control plane: the pool, the scheduler, the store, the core that keeps them (`control.Controller`), its
servicers (admin, agent link) and the inference router."""
