"""sparse family (to be written)."""
