"""mlp family (to be written)."""
