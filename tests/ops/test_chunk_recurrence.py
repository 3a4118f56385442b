"""chunk_recurrence: the loop h_{c+1} = T_c h_c + U_c with its hand-written backward, against the
same loop through autograd in float64."""
import pytest
import torch

from longmix.ops.chunk_recurrence import chunk_recurrence

F64 = torch.float64


def plain(T, U, h0):
    states = [h0]
    for c in range(U.shape[1]):
        states.append(T[:, c] @ states[-1] + U[:, c])
    return torch.stack(states, 1)


@pytest.mark.parametrize("chunks", [1, 2, 9])
def test_states_and_gradients_equal_the_plain_loop(chunks):
    g = torch.Generator().manual_seed(chunks)
    T = (0.5 * torch.randn(3, chunks, 4, 4, generator=g, dtype=F64)).requires_grad_()
    U = torch.randn(3, chunks, 4, 5, generator=g, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, 4, 5, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(3, chunks + 1, 4, 5, generator=g, dtype=F64)
    got, want = chunk_recurrence(T, U, h0), plain(T, U, h0)
    assert (got - want).abs().max() < 1e-12
    for a, b in zip(torch.autograd.grad((got * weight).sum(), (T, U, h0)),
                    torch.autograd.grad((want * weight).sum(), (T, U, h0))):
        assert (a - b).abs().max() < 1e-12 * max(1.0, b.abs().max().item())


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    args = (0.5 * torch.randn(2, 3, 3, 3, generator=g, dtype=F64), torch.randn(2, 3, 3, 2, generator=g, dtype=F64),
            torch.randn(2, 3, 2, generator=g, dtype=F64))
    assert torch.autograd.gradcheck(chunk_recurrence, tuple(t.requires_grad_() for t in args))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="T must be"):
        chunk_recurrence(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5))
