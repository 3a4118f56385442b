"""Ring attention on P gloo ranks vs a single-process float64 materialized reference.

One launch per P runs many configurations (layouts, causal or not, GQA, lengths, dtypes); the
ranks return their output and gradient rows and the test process compares them.
"""
import functools
import math

import pytest
import torch

from longmix.parallel.launch import run_local

B, D = 2, 8


# ----------------------------------------------------------------------------- segment layouts
def even(n, parts):
    base, extra = divmod(n, parts)
    cuts = [0]
    for i in range(parts):
        cuts.append(cuts[-1] + base + (i < extra))
    return [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(parts)]


def layout(name, L, P):
    """segments[r] for every rank r, built independently of longmix.parallel.layout."""
    if name == "contiguous":
        return [[s] for s in even(L, P)]
    chunks = even(L, 2 * P)
    if name == "zigzag":
        return [[chunks[r], chunks[2 * P - 1 - r]] for r in range(P)]
    if name == "permuted":  # ring order != sequence order, local segments in descending order
        return [[chunks[2 * P - 1 - (r + 1) % P], chunks[(r + 1) % P]] for r in range(P)]
    if name == "uneven":  # rank r gets ~ (2r+1) parts, rank 1 gets nothing
        weights = [0 if (r == 1) else 2 * r + 1 for r in range(P)]
        lengths = [L * w // sum(weights) for w in weights]
        lengths[-1] += L - sum(lengths)
        starts = [sum(lengths[:r]) for r in range(P)]
        return [[(s, n)] for s, n in zip(starts, lengths)]
    raise ValueError(name)


def rows(segs):
    return torch.cat([torch.arange(s, s + n) for s, n in segs] + [torch.zeros(0, dtype=torch.long)])


# ----------------------------------------------------------------------------- data and reference
def inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    L, H, HKV = case["L"], case["heads"], case["kv_heads"]
    q = torch.randn(B, L, H, D, generator=g, dtype=torch.float64) * case.get("logit_scale", 1.0)
    k = torch.randn(B, L, HKV, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, L, HKV, D, generator=g, dtype=torch.float64)
    dout = torch.randn(B, L, H, D, generator=g, dtype=torch.float64)
    return q, k, v, dout


def reference(case):
    """Materialized float64 out and (dq, dk, dv) over the whole sequence."""
    q, k, v, dout = inputs(case)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    H, L = case["heads"], case["L"]
    ke = k.repeat_interleave(H // k.shape[2], 2)
    ve = v.repeat_interleave(H // v.shape[2], 2)
    s = torch.einsum("bihd,bjhd->bhij", q, ke) * case.get("scale", 1 / math.sqrt(D))
    if case["causal"]:
        s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), ve)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


# ----------------------------------------------------------------------------- rank side
def _run_case(group, rank, case):
    import torch.distributed as dist

    from longmix.parallel.attn.ring import ring_attention
    from longmix.parallel.stats import CommStats

    ranks = case.get("ranks") or list(range(dist.get_world_size(group)))
    if rank not in ranks:
        return None
    pos = ranks.index(rank)
    idx = rows(case["segments"][pos])
    q, k, v, dout = (x[:, idx].to(case["dtype"]) for x in inputs(case))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    stats = CommStats()
    out = ring_attention(q, k, v, segments=case["segments"], causal=case["causal"], group=group,
                         ranks=case.get("ranks"), scale=case.get("scale"), stats=stats)
    forward = (stats.bytes_sent, stats.bytes_received)
    out.backward(dout)
    # numpy, not tensors: torch's queue pickling shares tensor storage with the (exiting) rank
    arrays = {key: x.detach().double().numpy() for key, x in
              (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad))}
    return dict(arrays, pos=pos, forward=forward, total=(stats.bytes_sent, stats.bytes_received))


def _rank_main(group, cases, check_errors):
    import torch.distributed as dist

    rank = dist.get_rank(group)
    return [_run_case(group, rank, case) for case in cases], (
        _bad_calls(group) if check_errors else None)


def _bad_calls(group):
    """Each bad call must raise ValueError locally (no communication happens before the check)."""
    import torch.distributed as dist

    from longmix.parallel.attn.ring import ring_attention

    rank = dist.get_rank(group)
    segs = [[(0, 4)], [(4, 4)]]
    q, kv = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 2, 8)
    calls = {
        "rows": lambda: ring_attention(q[:, :3], kv[:, :3], kv[:, :3], segments=segs,
                                       causal=True, group=group),
        "heads": lambda: ring_attention(torch.randn(1, 4, 3, 8), kv, kv, segments=segs,
                                        causal=False, group=group),
        "overlap": lambda: ring_attention(q, kv, kv, segments=[[(0, 4)], [(2, 4)]],
                                          causal=True, group=group),
        "members": lambda: ring_attention(q, kv, kv, segments=segs[:1], causal=True, group=group),
        "ranks": lambda: ring_attention(q, kv, kv, segments=segs[:1], causal=True, group=group,
                                        ranks=[1 - rank]),
        "dtype": lambda: ring_attention(q, kv.double(), kv.double(), segments=segs, causal=True,
                                        group=group),
    }
    messages = {}
    for name, call in calls.items():
        try:
            call()
            messages[name] = None
        except ValueError as exc:
            messages[name] = str(exc)
    return messages


# ----------------------------------------------------------------------------- the cases
def cases_for(P):
    cases = []

    def add(**kw):
        kw.setdefault("heads", 4)
        kw.setdefault("kv_heads", 2)
        kw.setdefault("dtype", torch.float64)
        kw.setdefault("seed", len(cases))
        kw["segments"] = layout(kw.pop("layout"), kw["L"], P) if "segments" not in kw else \
            kw["segments"]
        cases.append(kw)

    full = P != 1  # P = 1 has one segment whatever the layout: a short list suffices
    for name in ("contiguous", "zigzag", "uneven", "permuted")[:4 if full else 1]:
        for causal in (False, True):
            add(layout=name, L=13, causal=causal)
    for L in sorted({1, P}):
        add(layout="contiguous", L=L, causal=True, heads=2, kv_heads=2)
        add(layout="zigzag", L=L, causal=True, heads=3, kv_heads=1)
    add(layout="zigzag", L=96, causal=True, heads=4, kv_heads=1)
    for dtype in (torch.float64, torch.float32):  # logits up to ~1e4
        add(layout="zigzag", L=40, causal=True, logit_scale=1000.0, scale=1.0, dtype=dtype)
    for name in ("contiguous", "zigzag")[:2 if full else 1]:
        add(layout=name, L=64, causal=True, dtype=torch.float32, heads=4, kv_heads=1)
    if full:
        add(layout="uneven", L=33, causal=False, dtype=torch.float32)
        add(layout="zigzag", L=48, causal=True, dtype=torch.bfloat16)  # smoke: bf16 on the wire
    if P == 4:  # two independent rings inside one group, without subgroups
        for ring, causal in (([0, 2], True), ([3, 1], False)):
            add(segments=layout("zigzag", 21, 2), L=21, causal=causal, ranks=ring)
    return cases


def expected_bytes(case, pos):
    """Per-rank bytes from the ring schedule: every block but one's own/next's is moved once."""
    lengths = [sum(n for _, n in segs) for segs in case["segments"]]
    n, L = len(lengths), case["L"]
    if n == 1:
        return (0, 0), (0, 0)
    row = B * case["kv_heads"] * 2 * D  # K and V of one position
    elem = torch.empty(0, dtype=case["dtype"]).element_size()
    acc = 8 if case["dtype"] == torch.float64 else 4
    fwd = ((L - lengths[(pos + 1) % n]) * row * elem, (L - lengths[pos]) * row * elem)
    total = (2 * fwd[0] + L * row * acc, 2 * fwd[1] + L * row * acc)
    return fwd, total


@functools.lru_cache(maxsize=None)
def launch(P):
    """One launch per P for the whole module (each costs ~3-5 s of process start-up)."""
    cases = cases_for(P)
    # P = 2 also runs the argument checks, to save a launch
    results = run_local(_rank_main, P, args=(cases, P == 2), timeout=120, collective_timeout=30,
                        threads_per_rank=1)
    return P, cases, [r[0] for r in results], [r[1] for r in results]


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda p: f"P{p}")
def launched(request):
    return launch(request.param)


def test_matches_float64_reference(launched):
    P, cases, results, _ = launched
    for c, case in enumerate(cases):
        members = [r for r in range(P) if results[r][c] is not None]
        by_pos = {results[r][c]["pos"]: results[r][c] for r in members}
        order = [by_pos[i] for i in range(len(case["segments"]))]
        idx = torch.cat([rows(segs) for segs in case["segments"]])
        ref = dict(zip(("out", "dq", "dk", "dv"), reference(case)))
        for key, want in ref.items():
            got = torch.cat([torch.from_numpy(res[key]) for res in order], dim=1)
            want = want[:, idx]
            label = f"P={P} case {c} {key}: " + ", ".join(
                f"{k}={v}" for k, v in case.items() if k not in ("segments",))
            assert torch.isfinite(got).all(), label
            # error relative to the largest entry (gradients grow with the logits)
            err = ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()
            if case["dtype"] == torch.float64:
                bound = 1e-10
            elif case["dtype"] == torch.bfloat16:
                bound = 3e-2
            else:  # float32 rounds logits of size ~1e4 by ~1e-3; the same bound for every P
                bound = 1e-4 if "logit_scale" not in case else 2e-3
            assert err < bound, f"{label}: relative error {err:.2e} >= {bound}"


def test_bytes_match_ring_schedule(launched):
    P, cases, results, _ = launched
    for c, case in enumerate(cases):
        for r in range(P):
            res = results[r][c]
            if res is None:
                continue
            fwd, total = expected_bytes(case, res["pos"])
            assert res["forward"] == fwd, f"P={P} case {c} rank {r}"
            assert res["total"] == total, f"P={P} case {c} rank {r}"
            # the rule of thumb: forward sends at most 2 * L * kv_heads * d elements per rank
            elem = torch.empty(0, dtype=case["dtype"]).element_size()
            assert fwd[0] <= 2 * case["L"] * B * case["kv_heads"] * D * elem


def test_bad_arguments_raise_value_error_on_every_rank():
    results = launch(2)[3]
    expect = {"rows": "segments", "heads": "kv_heads", "overlap": "overlap",
              "members": "ring members", "ranks": "not in ranks", "dtype": "dtype"}
    for rank, messages in enumerate(results):
        for name, fragment in expect.items():
            assert messages[name] is not None, f"rank {rank}: {name} did not raise"
            assert fragment in messages[name], f"rank {rank}: {name}: {messages[name]}"
