"""conv family (to be written)."""
