"""The chunked selective scan, both backends (the fused CPU kernel and the PyTorch loop), against
the sequential recurrence and the materialized matrix."""
import platform
from functools import partial

import numpy as np
import pytest
import torch

from longmix.ops import scan_cpu
from longmix.ops.scan import segsum, selective_scan, selective_scan_matrix, selective_scan_sequential

F64 = torch.float64
BACKENDS = ["cpu", "torch"]


def inputs(batch=2, length=33, channels=5, d_state=3, seed=0, dtype=F64, decay=3.0, dt=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = r(batch, length, channels)
    delta = dt * torch.rand(batch, length, channels, generator=g, dtype=dtype)
    A = -decay * torch.rand(channels, d_state, generator=g, dtype=dtype)
    return u, delta, A, r(batch, length, d_state), r(batch, length, d_state), r(channels)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("length,chunk_size", [
    (1, 1), (1, 8),               # a single position
    (33, 1), (33, 4), (50, 7),    # chunks that do not divide L
    (33, 11), (64, 8),            # chunks that divide L
    (64, 100),                    # a chunk longer than L
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_scan_matches_sequential(length, chunk_size, backend):
    scan = partial(selective_scan, backend=backend)
    u, delta, A, B, C, D = inputs(length=length)
    y_ref, h_ref = selective_scan_sequential(u, delta, A, B, C, D, return_final_state=True)
    y, h = scan(u, delta, A, B, C, D, chunk_size=chunk_size, return_final_state=True)
    assert y.shape == u.shape
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(h, h_ref) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_state_continues_a_split_sequence(backend):
    scan = partial(selective_scan, backend=backend)
    u, delta, A, B, C, D = inputs(length=40)
    whole = scan(u, delta, A, B, C, D, chunk_size=6)
    first, h = scan(u[:, :17], delta[:, :17], A, B[:, :17], C[:, :17], D, chunk_size=6, return_final_state=True)
    second = scan(u[:, 17:], delta[:, 17:], A, B[:, 17:], C[:, 17:], D, chunk_size=6, initial_state=h)
    assert rel_err(torch.cat([first, second], 1), whole) < 1e-12


@pytest.mark.parametrize("length,chunk_size", [(1, 4), (13, 4), (33, 8)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_initial_state_and_final_state_match_sequential(length, chunk_size, backend):
    """A nonzero state entering position 0: output, final state and the gradients of both
    (w.r.t. every input and the initial state) agree with the plain recurrence."""
    scan = partial(selective_scan, backend=backend)
    tensors = [t.requires_grad_() for t in inputs(length=length)]
    h0 = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    results = []
    for fn in (lambda *a, **k: scan(*a, chunk_size=chunk_size, **k),
               selective_scan_sequential):
        y, h = fn(*tensors, initial_state=h0, return_final_state=True)
        loss = y.square().sum() + (h * torch.linspace(-1, 1, h.numel(), dtype=F64).view_as(h)).sum()
        results.append((y, h, torch.autograd.grad(loss, [*tensors, h0])))
    (y, h, grads), (y_ref, h_ref, grads_ref) = results
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(h, h_ref) < 1e-12
    for g, g_ref in zip(grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10


@pytest.mark.parametrize("length", [1, 7, 33])
def test_matrix_form_matches_sequential(length):
    u, delta, A, B, C, D = inputs(length=length)
    M = selective_scan_matrix(delta, A, B, C)
    assert M.shape == (2, 5, length, length)
    assert (M.triu(1) == 0).all()
    y = torch.einsum("bdts,bsd->btd", M, u) + u * D
    assert rel_err(y, selective_scan_sequential(u, delta, A, B, C, D)) < 1e-12


def test_segsum_is_the_sum_over_each_segment():
    x = torch.randn(3, 9, dtype=F64)
    S = segsum(x)
    for t in range(9):
        for s in range(9):
            want = x[:, s + 1:t + 1].sum(-1) if s <= t else torch.full((3,), float("-inf"), dtype=F64)
            assert torch.equal(S[:, t, s], want) or torch.allclose(S[:, t, s], want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_sequential(backend):
    scan = partial(selective_scan, backend=backend)
    tensors = [t.requires_grad_() for t in inputs(length=19)]
    grads = []
    for fn in (lambda *a: scan(*a, chunk_size=4), selective_scan_sequential):
        out = fn(*tensors)
        grads.append(torch.autograd.grad(out.square().sum(), tensors))
    for g_chunked, g_seq in zip(*grads):
        assert rel_err(g_chunked, g_seq) < 1e-10


@pytest.mark.parametrize("length,chunk_size", [(5, 2), (6, 3)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_of_the_chunked_backward(length, chunk_size, backend):
    """The hand-written backward against finite differences, every input and the initial state
    at once, and both outputs (y and the final state) carrying gradient."""
    scan = partial(selective_scan, backend=backend)
    u, delta, A, B, C, D = inputs(batch=2, length=length, channels=3, d_state=2)
    h0 = torch.randn(2, 3, 2, dtype=F64)
    tensors = [t.requires_grad_() for t in (u, delta, A, B, C, D, h0)]

    def fn(u, delta, A, B, C, D, h0):
        return scan(u, delta, A, B, C, D, chunk_size=chunk_size, initial_state=h0,
                              return_final_state=True)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_keeps_only_chunk_boundary_states(backend):
    """What the backward stores does not grow with d_state x L: the inputs and D, plus one state
    per chunk (not per position), so memory is O(L d + L n + L / chunk d n)."""
    scan = partial(selective_scan, backend=backend)
    u, delta, A, B, C, D = inputs(batch=1, length=64, channels=4, d_state=8)
    tensors = [t.requires_grad_() for t in (u, delta, A, B, C)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        scan(*tensors, chunk_size=16)
    inputs_numel = sum(t.numel() for t in tensors)
    assert inputs_numel <= sum(saved) <= inputs_numel + 4 + (64 // 16) * 4 * 8  # + D (zeros when not given)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_is_scanned_in_float32(backend):
    """bf16 inputs: y comes back in bf16, the state in float32, both as the float32 scan of the
    same (rounded) inputs; a bf16 recurrence would round the state at every step instead."""
    scan = partial(selective_scan, backend=backend)
    u, delta, A, B, C, _ = (t.to(torch.bfloat16) for t in inputs(length=300, decay=0.01))
    y, h = scan(u, delta, A, B, C, return_final_state=True)
    y32, h32 = scan(*(t.float() for t in (u, delta, A, B, C)), return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert torch.equal(y, y32.to(torch.bfloat16)) and torch.equal(h, h32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_strongly_decaying_sequence_is_stable(backend):
    """2^14 steps with |delta A| up to 50 per step: the cumulative log-decay reaches ~ -4e5, so
    a global prefix-product formulation (exp(-cumsum) ratios) overflows even in float64; the
    chunked scan only exponentiates non-positive chunk-relative sums."""
    scan = partial(selective_scan, backend=backend)
    length = 2 ** 14
    u, delta, A, B, C, D = inputs(batch=1, length=length, channels=3, d_state=2, decay=50.0)
    assert torch.isinf(torch.exp(-(delta[..., None] * A).cumsum(1))).any()  # the naive way fails
    y_ref = selective_scan_sequential(u, delta, A, B, C, D)
    y32 = scan(*(t.float() for t in (u, delta, A, B, C, D)))
    assert torch.isfinite(y32).all()
    assert rel_err(y32.double(), y_ref) < 1e-5
    assert rel_err(scan(u, delta, A, B, C, D, chunk_size=64), y_ref) < 1e-12


def test_bad_shapes_name_the_argument():
    u, delta, A, B, C, D = inputs(length=8)
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[:, :4], A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C)
    with pytest.raises(ValueError, match="C must be"):
        selective_scan(u, delta, A, B, C[..., :1])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, delta, A, B, C, D[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(u, delta, A, B, C, initial_state=torch.zeros(1, 1, 1, dtype=F64))


def test_backend_is_checked():
    u, delta, A, B, C, _ = inputs(length=4)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(u, delta, A, B, C, backend="numba")
    with pytest.raises(ValueError, match="backend='cpu' needs CPU tensors"):
        selective_scan(*(t.to("meta") for t in (u, delta, A, B, C)), backend="cpu")


@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_kernel_channel_blocks_match_one_block(monkeypatch, batch):
    """Channels split into blocks of 2 (5 channels: 2 + 2 + 1), as when batch < threads: each
    block's dB, dC are partial sums over its channels and must add up to the whole."""
    tensors = [t.requires_grad_() for t in inputs(batch=batch, length=21)]
    results = []
    for per_block in (5, 2):
        monkeypatch.setattr(scan_cpu, "_channels_per_block", lambda batch, channels, threads, p=per_block: p)
        y = selective_scan(*tensors, chunk_size=8, backend="cpu")
        results.append((y, torch.autograd.grad(y.square().sum(), tensors)))
    (y_one, grads_one), (y_blocks, grads_blocks) = results
    assert rel_err(y_blocks, y_one) < 1e-14
    for g_blocks, g_one in zip(grads_blocks, grads_one):
        assert rel_err(g_blocks, g_one) < 1e-13


def test_cpu_kernel_float32_exp_is_within_two_ulp():
    """The float32 kernel's polynomial exp: within 2 ulp of the exact exp wherever that is a
    normal float32 up to 2.5e38, 0 below -87.7, inf beyond float32's range."""
    x = np.concatenate([np.linspace(-100.0, 88.35, 4_001, dtype=np.float32), np.float32([88.8, 1e30])])
    got = np.array([scan_cpu._exp32(v) for v in x], dtype=np.float64)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32).astype(np.float64)  # exact, rounded
    normal = (want >= np.finfo(np.float32).tiny) & np.isfinite(want)
    ulp = np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert (np.abs(got[normal] - want[normal]) <= 2 * ulp).all()
    assert (got[x < -87.7] == 0).all()
    assert np.isinf(got[~np.isfinite(want)]).all() and (~np.isfinite(want)).sum() == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_batch_gives_an_empty_output(backend):
    u, delta, A, B, C, D = (t[:0] if t.dim() == 3 else t for t in inputs(length=6))
    y, h = selective_scan(u, delta, A, B, C, D, return_final_state=True, backend=backend)
    assert y.shape == (0, 6, 5) and h.shape == (0, 5, 3)


def test_cpu_kernel_leaves_torch_threads_alone():
    """The kernel runs on torch's thread count and does not change it (numba's OpenMP layer
    would reset it for the whole process)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        tensors = [t.requires_grad_() for t in inputs(length=9)]
        selective_scan(*tensors, backend="cpu").sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="flush-to-zero is an x86 MXCSR mode")
def test_cpu_kernel_threads_flush_denormals_and_the_callers_do_not():
    """Subnormals cost ~100x on x86, and a backward whose adjoint decays over a long stretch
    without gradient meets them: the kernel's threads treat them as zero, the caller's thread
    keeps its own floating-point mode."""
    tiny = np.array([1e-39], dtype=np.float32)  # subnormal in float32
    out = np.empty(1, dtype=np.float32)

    def kernel(job_range, x, y):
        y[0] = x[0] * np.float32(1.0)

    scan_cpu._run_jobs(kernel, 1, 1, tiny, out)
    assert out[0] == 0.0
    assert (tiny * np.float32(1.0))[0] != 0.0  # this thread: untouched
