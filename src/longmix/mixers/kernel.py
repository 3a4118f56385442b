"""kernel family (to be written)."""
