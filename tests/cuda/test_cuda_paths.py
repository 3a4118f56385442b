"""The CUDA paths against float64 references computed on the CPU.

Skipped where no GPU is visible (CI has none); run on a GPU machine with
``python -m pytest tests/cuda``. Each check compares a CUDA kernel's forward and gradients with
an independent float64 computation, because a dispatch that was never run is not trusted.
"""
from __future__ import annotations

import pytest
import torch

from longmix import mixers
from longmix.ops.attention import attention_with_lse
from longmix.ops.scan import selective_scan, selective_scan_sequential

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# Half-precision kernels round inputs to ~3 digits; the bound scales with that unit roundoff.
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 2e-3}


def _reference_attention(q, k, v, causal, scale):
    """softmax(q k^T * scale) v and its log-sum-exp in float64, (B, L, H, D) layout."""
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale
    if causal:
        mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1)
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v), lse


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_with_lse_on_cuda_matches_float64(dtype, causal, kv_heads):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 300, 4, 64, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 300, kv_heads, 64, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 300, kv_heads, 64, generator=gen, dtype=torch.float64)
    dout = torch.randn(2, 300, 4, 64, generator=gen, dtype=torch.float64)
    scale = 64 ** -0.5

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    rep = 4 // kv_heads
    ref_out, ref_lse = _reference_attention(leaves[0], leaves[1].repeat_interleave(rep, 2),
                                            leaves[2].repeat_interleave(rep, 2), causal, scale)
    dlse = torch.randn(ref_lse.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad((ref_out, ref_lse), leaves, (dout, dlse))

    cuda = [t.to("cuda", dtype).requires_grad_() for t in (q, k, v)]
    out, lse = attention_with_lse(*cuda, causal=causal, scale=scale)
    # the lse gradient too: ring attention's merge differentiates through it
    grads = torch.autograd.grad((out, lse), cuda, (dout.to("cuda", dtype), dlse.to("cuda", lse.dtype)))

    tol = TOLERANCE[dtype]
    assert (out.double().cpu() - ref_out.detach()).abs().max() < tol
    assert (lse.double().cpu() - ref_lse.detach()).abs().max() < tol
    for got, want in zip(grads, ref_grads):
        assert (got.double().cpu() - want).abs().max() < tol * max(1.0, want.abs().max().item())


def test_selective_scan_on_cuda_matches_sequential_float64():
    gen = torch.Generator().manual_seed(1)
    b, length, d, n = 2, 333, 8, 4
    u = torch.randn(b, length, d, generator=gen, dtype=torch.float64)
    delta = torch.rand(b, length, d, generator=gen, dtype=torch.float64) * 0.5
    A = -torch.rand(d, n, generator=gen, dtype=torch.float64) - 0.1
    B = torch.randn(b, length, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, length, n, generator=gen, dtype=torch.float64)
    h0 = torch.randn(b, d, n, generator=gen, dtype=torch.float64)
    args = [u, delta, A, B, C]

    cpu = [t.clone().requires_grad_() for t in args + [h0]]
    y_ref, s_ref = selective_scan_sequential(*cpu[:5], initial_state=cpu[5], return_final_state=True)
    g_ref = torch.autograd.grad((y_ref.sum(), s_ref.sum()), cpu)

    gpu = [t.cuda().requires_grad_() for t in args + [h0]]
    y, s = selective_scan(*gpu[:5], chunk_size=64, initial_state=gpu[5], return_final_state=True)
    g = torch.autograd.grad((y.sum(), s.sum()), gpu)
    assert torch.allclose(y.cpu(), y_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(s.cpu(), s_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(g, g_ref):
        assert torch.allclose(got.cpu(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", mixers.available())
def test_every_mixer_on_cuda_matches_cpu_float64(name):
    """Forward, input and parameter gradients of each mixer on the GPU equal the CPU in float64."""
    cls = mixers.get_class(name)
    torch.manual_seed(0)
    options = {"max_len": 64} if cls.requires_max_len else {}
    mixer = mixers.build(name, 32, heads=4, causal=cls.taxonomy.causal, **options).double()
    x = torch.randn(2, 64, 32, dtype=torch.float64, requires_grad=True)

    y_cpu = mixer(x)
    g_cpu = torch.autograd.grad(y_cpu.square().sum(), [x, *mixer.parameters()])
    gpu = mixer.cuda()
    x_gpu = x.detach().cuda().requires_grad_()
    y_gpu = gpu(x_gpu)
    g_gpu = torch.autograd.grad(y_gpu.square().sum(), [x_gpu, *gpu.parameters()])
    assert torch.allclose(y_gpu.cpu(), y_cpu, rtol=1e-8, atol=1e-10)
    for got, want in zip(g_gpu, g_cpu):
        assert torch.allclose(got.cpu(), want, rtol=1e-7, atol=1e-9)
