"""ssm family (to be written)."""
