"""longmix: long-sequence token mixers under one interface, and exact distributed attention."""
__version__ = "0.1.0"
