"""Recurrent step mode and the state-passing hooks: every causal mixer is also a recurrence.

Stepping token by token, continuing from a state chunk by chunk (chunks of length 0 and 1, and
shorter than a block or window), and chaining state summaries must all reproduce ``forward``
in float64. Mixers come from the registry, so a new causal mixer is covered automatically.
"""
import pytest
import torch

from longmix import mixers

DIM, HEADS, BATCH, LENGTH = 8, 2, 2, 19
# Small blocks, windows and chunks so that the cuts below fall inside and across them.
OPTIONS = {"local": dict(block_size=4), "mamba": dict(chunk_size=3), "linear": dict(chunk_size=4),
           "performer": dict(chunk_size=4), "mamba2": dict(chunk_size=3), "gated_deltanet": dict(chunk_size=3)}
VARIANTS = [(name, OPTIONS.get(name, {})) for name in mixers.available() if mixers.get_class(name).taxonomy.causal]
VARIANTS += [("softmax", dict(window=5)), ("mamba", dict(d_conv=0)),
             ("mamba", dict(chunk_size=3, bcdt_norm=True)), ("hyena", dict(short_kernel=1)),
             ("mamba2", dict(groups=2, chunk_size=3)),
             ("gated_deltanet", dict(key_heads=1, projections="separate", chunk_size=3))]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items() if k != "chunk_size") for name, opts in VARIANTS]
# Cut points of LENGTH: chunks of 1, 1, 0, 2, 1, 7 and 7 positions.
CUTS = (0, 1, 2, 2, 4, 5, 12, LENGTH)
# The mixers whose state has a fixed size: exactly these support state passing.
FIXED_STATE = {"linear", "performer", "s4d", "mamba", "local", "mamba2", "gated_deltanet"}


def make(name, options, causal=True, seed=0):
    torch.manual_seed(seed)
    return mixers.build(name, DIM, heads=HEADS, causal=causal, max_len=64, **options).double()


def randn(length, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, length, DIM, generator=g, dtype=torch.float64)


def assert_close(a, b, tol=1e-10):
    assert a.shape == b.shape
    if b.numel() == 0:
        return
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item()
    assert err < tol, f"relative error {err:.3g} >= {tol:g}"


def chunks(x):
    return [x[:, a:b] for a, b in zip(CUTS, CUTS[1:])]


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_stepping_equals_forward(name, options):
    mixer, x = make(name, options), randn(LENGTH)
    with torch.no_grad():
        state, ys = mixer.init_state(BATCH), []
        for t in range(LENGTH):
            y, state = mixer.step(x[:, t], state)
            ys.append(y)
        assert_close(torch.stack(ys, 1), mixer(x))
        # the same final state as one continuation over the whole sequence
        final = mixer.forward_with_state(x, mixer.init_state(BATCH))[1]
    assert state.keys() == final.keys()
    for key in state:
        assert_close(state[key].double(), final[key].double())


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_continuation_over_uneven_chunks_equals_forward(name, options):
    mixer, x = make(name, options), randn(LENGTH)
    with torch.no_grad():
        state, outs = mixer.init_state(BATCH), []
        for piece in chunks(x):
            y, state = mixer.forward_with_state(piece, state)
            assert y.shape == piece.shape
            outs.append(y)
        assert_close(torch.cat(outs, 1), mixer(x))


@pytest.mark.parametrize("name,options", [v for v in VARIANTS if v[0] in FIXED_STATE or v[1].get("window")],
                         ids=[i for i, v in zip(IDS, VARIANTS) if v[0] in FIXED_STATE or v[1].get("window")])
def test_bounded_states_keep_their_size_while_stepping(name, options):
    """Fixed-size states (and softmax's rolling buffer under a window) do not grow with L."""
    mixer, x = make(name, options), randn(LENGTH)
    with torch.no_grad():
        state = mixer.init_state(BATCH)
        shapes = []
        for t in range(LENGTH):
            state = mixer.step(x[:, t], state)[1]
            shapes.append({k: tuple(v.shape) for k, v in state.items()})
    assert all(s == shapes[-1] for s in shapes[options.get("window", 1):]), shapes


def fold(mixer, pieces):
    """Each piece's incoming state from the summaries alone (what state passing computes)."""
    incoming = [mixer.init_state(BATCH) for _ in pieces]
    for stage, keys in mixer.state_stages.items():
        summaries = [mixer.state_summary(p, s, stage) for p, s in zip(pieces, incoming)]
        state = mixer.init_state(BATCH)
        for i, summary in enumerate(summaries):
            incoming[i] = {**incoming[i], **{k: state[k] for k in keys}}
            state = mixer.chain_state(state, summary, stage)
    return incoming


STATE_VARIANTS = [(n, o) for n, o in VARIANTS if n in FIXED_STATE]
STATE_IDS = [i for i, (n, _) in zip(IDS, VARIANTS) if n in FIXED_STATE]


@pytest.mark.parametrize("name,options", STATE_VARIANTS, ids=STATE_IDS)
def test_state_summaries_chain_to_forward_with_gradients(name, options):
    mixer, x = make(name, options), randn(LENGTH)
    grad_out = randn(LENGTH, seed=2)

    def grads(run):
        mixer.zero_grad()
        xg = x.clone().requires_grad_()
        y = run(xg)
        y.backward(grad_out)
        return [y.detach(), xg.grad] + [p.grad.clone() for p in mixer.parameters() if p.grad is not None]

    def by_state_passing(xg):
        pieces = chunks(xg)
        return torch.cat([mixer.forward_with_state(p, s)[0] for p, s in zip(pieces, fold(mixer, pieces))], 1)

    expected, got = grads(mixer), grads(by_state_passing)
    assert len(expected) == len(got)
    for a, b in zip(got, expected):
        assert_close(a, b)


@pytest.mark.parametrize("name,options", STATE_VARIANTS, ids=STATE_IDS)
def test_summary_size_does_not_grow_with_length(name, options):
    mixer = make(name, options)
    with torch.no_grad():
        state = mixer.init_state(BATCH)
        for stage, keys in mixer.state_stages.items():
            sizes = {length: sum(t.numel() for t in mixer.state_summary(randn(length), state, stage).values())
                     for length in (0, 3, 40)}
            assert len(set(sizes.values())) == 1, sizes
            state = mixer.chain_state(state, mixer.state_summary(randn(3), state, stage), stage)


@pytest.mark.parametrize("name", mixers.available())
def test_parallel_forms_declare_state_passing_exactly_for_fixed_states(name):
    cls = mixers.get_class(name)
    if cls.taxonomy.causal:
        assert ("state" in make(name, OPTIONS.get(name, {})).parallel_forms) == (name in FIXED_STATE)
    mixer = make(name, {}, causal=False)
    assert "state" not in mixer.parallel_forms
    with pytest.raises(ValueError, match=type(mixer).__name__ + r"\.init_state: no step mode for causal=False"):
        mixer.init_state(BATCH)
    with pytest.raises(ValueError, match="no state-passing form"):
        mixer.state_summary(randn(3))


@pytest.mark.parametrize("name", sorted({n for n, _ in VARIANTS} - FIXED_STATE))
def test_growing_states_refuse_state_passing(name):
    mixer = make(name, OPTIONS.get(name, {}))
    with pytest.raises(ValueError, match="grows with the sequence"):
        mixer.state_summary(randn(3))


def test_bad_step_input_and_state_raise():
    mixer = make("linear", {})
    state = mixer.init_state(BATCH)
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, dim=8\)"):
        mixer.step(randn(1), state)
    with pytest.raises(ValueError, match="state must have keys"):
        mixer.step(randn(1)[:, 0], {"kv": state["kv"]})
    with pytest.raises(ValueError, match="is for batch 2"):
        mixer.step(torch.zeros(3, DIM, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        mixer.init_state(0)
    with pytest.raises(ValueError, match="stage must be one of"):
        mixer.state_summary(randn(3), stage="conv")


# Causal mixers whose kernels do not run in bfloat16 on the CPU (torch's FFT; s4d's complex
# Vandermonde product): their initial state is checked, not a step.
NO_BF16_STEP = {"hyena", "longconv", "s4d"}


def _state_tensors(state, path="state"):
    """(path, tensor) of every floating-point tensor in a state (dicts and lists nested)."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            yield path, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _state_tensors(value, f"{path}[{key!r}]")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _state_tensors(value, f"{path}[{i}]")


def _assert_wide(state, at_least, where):
    tensors = list(_state_tensors(state))
    assert tensors, f"{where}: no floating-point state to check"
    for path, t in tensors:
        assert t.real.dtype.itemsize >= at_least.itemsize, f"{where}: {path} is {t.dtype}"


@pytest.mark.parametrize("name,options", VARIANTS, ids=IDS)
def test_states_are_kept_in_float32_or_wider(name, options):
    """A state summed over many tokens loses them in bfloat16 (8 bits of mantissa): whatever the
    mixer's dtype, its state is float32 or wider, at the start and after stepping and
    continuing; a float64 mixer keeps float64."""
    mixer = mixers.build(name, DIM, heads=HEADS, causal=True, max_len=64, **options)
    _assert_wide(mixer.double().init_state(BATCH), torch.float64, f"{name} in float64")
    mixer = mixer.to(torch.bfloat16)
    state = mixer.init_state(BATCH)
    _assert_wide(state, torch.float32, f"{name} initial")
    if name in NO_BF16_STEP:
        return
    y, state = mixer.step(randn(1)[:, 0].to(torch.bfloat16), state)
    assert y.dtype == torch.bfloat16
    _assert_wide(state, torch.float32, f"{name} after a step")
    _, state = mixer.forward_with_state(randn(5).to(torch.bfloat16), state)
    _assert_wide(state, torch.float32, f"{name} after forward_with_state")
