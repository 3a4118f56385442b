"""Numeric kernels: pure functions on tensors (no parameters, no process groups)."""
from .attention import attention_backward, attention_forward, attention_with_lse, merge_partials
