"""fourier family (to be written)."""
