"""attention family (to be written)."""
