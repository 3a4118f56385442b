"""lowrank family (to be written)."""
