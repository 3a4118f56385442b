"""gated_deltanet's chunk size: chosen by head dim when not given, never changing the output."""
import pytest
import torch

from longmix import mixers
from longmix.ops.delta_rule import default_chunk_size


@pytest.mark.parametrize("dim,heads,head_k_dim", [(64, 4, None), (16, 1, 128)])
def test_default_chunk_size_follows_the_key_head_dim_and_output_does_not_depend_on_it(dim, heads, head_k_dim):
    torch.manual_seed(0)
    m = mixers.build("gated_deltanet", dim, heads=heads, causal=True, head_k_dim=head_k_dim).double()
    assert m.chunk_size == default_chunk_size(m.dk) == (32 if m.dk <= 32 else 64)
    x = torch.randn(2, 37, dim, dtype=torch.float64)
    other = mixers.build("gated_deltanet", dim, heads=heads, causal=True, head_k_dim=head_k_dim, chunk_size=5).double()
    other.load_state_dict(m.state_dict())
    err = (m(x) - other(x)).abs().max() / other(x).abs().max()
    assert err < 1e-10, f"relative error {err:.3g}"


def test_bad_chunk_size_is_named():
    with pytest.raises(ValueError, match="chunk_size"):
        mixers.build("gated_deltanet", 8, heads=2, chunk_size=0)
