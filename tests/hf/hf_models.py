"""Small random transformers models saved to a directory and loaded back (the real loading path),
and a rank function comparing ``longmix.hf.parallelize`` with a one-process run.

Each family is a tiny config (hidden 32, 2 layers, vocab 97, GQA where the family has it); its
weights are random and saved with ``save_pretrained``; every process loads them with
``from_pretrained(path)``. Nothing downloads.
"""
from __future__ import annotations


import torch

import longmix.parallel as lp

VOCAB = 97
MOE_FAMILIES = ("jamba", "nemotron_h", "qwen3_next", "mixtral", "granite")  # matched in the saved path


def family_configs() -> dict:
    """name -> a small config of that family (Llama, Qwen3, Mistral with a sliding window, Gemma3
    alternating sliding and full layers; Mamba, and Jamba: a Mamba layer with dt/B/C norms, then
    an attention layer with a mixture of experts)."""
    from transformers import (Gemma3TextConfig, JambaConfig, LlamaConfig, MambaConfig, MistralConfig,
                              Qwen3Config)

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  head_dim=8)
    return {
        "llama": LlamaConfig(**common),
        "qwen3": Qwen3Config(**common, tie_word_embeddings=True),
        # a window of 3 keys: short enough that L = 9..13 crosses several shard edges
        "mistral_window": MistralConfig(**common, sliding_window=3),
        "gemma3": Gemma3TextConfig(**common, sliding_window=4, layer_types=[
            "sliding_attention", "full_attention"], query_pre_attn_scalar=8),
        "mamba": MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4,
                             conv_kernel=3, expand=2),
        "jamba": JambaConfig(**common, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                             expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                             mamba_d_state=4, mamba_d_conv=3, mamba_expand=2),
    }


def hybrid_configs() -> dict:
    """name -> a small config of a model mixing attention with Mamba-2 or gated DeltaNet layers,
    or with MoE layers whose router loss is asked for (``output_router_logits=True``, coefficient
    0.5 so that it weighs in the loss): Mamba-2 alone; Bamba (Mamba-2, attention, Mamba-2);
    Nemotron-H (Mamba-2, attention, MoE, MLP); Zamba2 (Mamba-2, then the shared transformer and a
    Mamba-2); Qwen3-Next (DeltaNet, attention, DeltaNet, every layer an MoE, router loss);
    Granite-MoE-Hybrid (Mamba-2, attention, Mamba-2, MoE, router loss, its muP multipliers);
    Mixtral and Jamba (Mamba, then attention, both MoE) with the router loss. Chunk sizes of 4 so
    that L = 11 spans several SSD chunks."""
    from transformers import (BambaConfig, GraniteMoeHybridConfig, JambaConfig, Mamba2Config,
                              MixtralConfig, NemotronHConfig, Qwen3NextConfig, Zamba2Config)

    attention_heads = dict(num_attention_heads=4, num_key_value_heads=2)
    attention = dict(**attention_heads, head_dim=8)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, max_position_embeddings=64)
    router = dict(output_router_logits=True, router_aux_loss_coef=0.5, num_experts_per_tok=2)
    return {
        "mamba2": Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=4,
                               head_dim=16, n_groups=2, state_size=4, conv_kernel=3, expand=2,
                               chunk_size=4),
        "bamba": BambaConfig(**common, **attention, num_hidden_layers=3, attn_layer_indices=[1],
                             mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=4,
                             mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4),
        "nemotron_h": NemotronHConfig(**common, **attention, layers_block_type=[
            "linear_attention", "full_attention", "moe", "mlp"], mamba_num_heads=4, mamba_head_dim=16,
            n_groups=1, ssm_state_size=4, conv_kernel=3, chunk_size=4, n_routed_experts=2,
            num_experts_per_tok=1, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16),
        "zamba2": Zamba2Config(**common, num_hidden_layers=3, layers_block_type=[
            "linear_attention", "hybrid", "linear_attention"], mamba_d_state=4, mamba_d_conv=3,
            n_mamba_heads=4, mamba_headdim=16, chunk_size=4, num_attention_heads=4,
            num_key_value_heads=4, use_mem_rope=True),
        "qwen3_next": Qwen3NextConfig(**common, **attention, **router, num_hidden_layers=3, layer_types=[
            "linear_attention", "full_attention", "linear_attention"], num_experts=4,
            moe_intermediate_size=16, shared_expert_intermediate_size=16, linear_num_key_heads=2,
            linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            linear_conv_kernel_dim=3),
        "granite_hybrid": GraniteMoeHybridConfig(
            **common, **attention_heads, **router, num_hidden_layers=3,
            layer_types=["mamba", "attention", "mamba"], mamba_n_heads=4, mamba_d_head=16,
            mamba_n_groups=1, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4,
            num_local_experts=4, shared_intermediate_size=16, position_embedding_type="rope",
            embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3,
            logits_scaling=3.0),
        "mixtral_router": MixtralConfig(**common, **attention, **router, num_hidden_layers=2,
                                        num_local_experts=4),
        "jamba_router": JambaConfig(**common, **router, num_attention_heads=4, num_key_value_heads=2,
                                    num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1,
                                    expert_layer_period=1, expert_layer_offset=0, num_experts=4,
                                    mamba_d_state=4, mamba_d_conv=3, mamba_expand=2),
    }


def save_families(root, names=None, configs=None) -> dict:
    """Save each family's random model (``configs``, default :func:`family_configs`) under
    ``root/name``; returns name -> path (str)."""
    from transformers import AutoModelForCausalLM

    paths = {}
    for i, (name, cfg) in enumerate((configs or family_configs()).items()):
        if names is not None and name not in names:
            continue
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(cfg)
        path = root / name
        model.save_pretrained(path)
        paths[name] = str(path)
    return paths


def load(path: str, dtype: torch.dtype, attn: str = "eager"):
    from transformers import AutoModelForCausalLM

    # MoE experts: the eager loop (the grouped matmul has no float64 kernel)
    moe = any(name in str(path) for name in MOE_FAMILIES)
    extra = {"experts_implementation": "eager"} if moe else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **extra)
    return model.eval()


def inputs(seq_len: int, batch: int = 2, seed: int = 0):
    """input_ids and labels (some set to -100) of the whole sequence, the same on every rank."""
    g = torch.Generator().manual_seed(seed + seq_len)
    ids = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
    labels = torch.randint(0, VOCAB, (batch, seq_len), generator=g)
    labels[torch.rand(batch, seq_len, generator=g) < 0.2] = -100
    labels[:, -1] = 1  # at least one scored target when L > 1 (L = 1 has none: loss 0/0 = nan)
    return ids, labels


def run_once(model, ids, labels):
    """Logits, loss and every parameter gradient of one forward and backward."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=labels)
    out.loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in model.parameters()]
    return out.logits.detach(), out.loss.detach(), grads


_LOADED: dict = {}


def load_cached(path: str, dtype: torch.dtype):
    """``load``, once per (path, dtype) in this process (the cases of a launch share models)."""
    key = (path, dtype)
    if key not in _LOADED:
        _LOADED[key] = load(path, dtype)
    return _LOADED[key]


def parallel_run(path: str, dtype: torch.dtype, seq_len: int, layout: str, group=None,
                 strategy: str = "auto"):
    """The parallel model's logits (unsharded), loss and parameter gradients (summed over the
    ranks of ``group``), its attention run by ``strategy``. One process when torch.distributed is
    not initialized."""
    import longmix.hf as lh

    model = load_cached(path, dtype)
    ids, labels = inputs(seq_len)
    pmodel = lh.parallelize(model, group=group, layout=layout, strategy=strategy)
    model.zero_grad(set_to_none=True)
    out = pmodel(lp.shard(ids, group, layout), labels=lp.shard(labels, group, layout))
    out.loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in model.parameters()]
    if torch.distributed.is_initialized():
        for g in grads:
            torch.distributed.all_reduce(g, group=group)
    logits = lp.unshard(out.logits.detach(), group, layout)
    return logits, out.loss.detach(), grads


def rel(x: torch.Tensor, ref: torch.Tensor, floor: float = 1e-30) -> float:
    """max |x - ref| / max(max |ref|, floor) over the finite entries of ``ref``; inf where ``x`` is
    NaN elsewhere than ``ref`` (both NaN: the 0/0 loss of a sequence with no scored target)."""
    x, ref = x.double(), ref.double()
    if not torch.equal(torch.isnan(x), torch.isnan(ref)):
        return float("inf")
    keep = ~torch.isnan(ref)
    if not keep.any():
        return 0.0
    diff = (x[keep] - ref[keep]).abs().max()
    return (diff / ref[keep].abs().max().clamp_min(floor)).item()


def backward(model, out, group=None) -> tuple:
    """The parameter gradients of ``out.loss`` and, when the model returns one, of ``out.aux_loss``
    alone (None otherwise), summed over the ranks of ``group`` when torch.distributed is
    initialized."""
    def grads():
        got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        if torch.distributed.is_initialized():
            for g in got:
                torch.distributed.all_reduce(g, group=group)
        return got

    aux = getattr(out, "aux_loss", None)
    model.zero_grad(set_to_none=True)
    out.loss.backward(retain_graph=aux is not None)
    loss_grads = grads()
    if aux is None:
        return loss_grads, None
    model.zero_grad(set_to_none=True)
    aux.backward()
    return loss_grads, grads()


def outcome(logits, out, grads) -> tuple:
    """((logits, loss, loss gradients), (logits, aux_loss, aux_loss gradients) or None)."""
    main = (logits, out.loss.detach(), grads[0])
    return main, None if grads[1] is None else (logits, out.aux_loss.detach(), grads[1])


def aux_errors(aux, ref, float32_params: set[int] = frozenset()) -> dict:
    """errors() of the aux loss and its gradients; inf when only one of the runs has one."""
    if (aux is None) != (ref is None):
        return {"aux_loss": float("inf")}
    if ref is None:
        return {}
    errs = errors(aux, ref, float32_params)
    out = {"aux_loss": errs["loss"], "aux_grads": errs["grads"]}
    if "float32_grads" in errs:
        out["aux_float32_grads"] = errs["float32_grads"]
    return out


def float32_grads(path: str) -> set[int]:
    """Indices (in ``parameters()`` order) of the parameters whose gradient transformers reduces
    over rows in float32 even in a float64 model: the RMSNorm weights of Gemma3 and Qwen3-Next
    (``x.float() * (1 + weight.float())``) and of Nemotron-H (``weight.to(float32) * x``). Split
    over ranks, that float32 sum rounds differently (up to 2.4e-7 relative measured), so these are
    held to float32 rounding against P = 1. The norms inside a mapped mixer (longmix computes
    them) are not among them."""
    if not any(name in path for name in ("gemma3", "nemotron_h", "qwen3_next")):
        return set()
    from longmix.hf.plan import mixer_layers

    model = load_cached(path, torch.float64)
    mapped = tuple(name + "." for name, _ in mixer_layers(model))
    return {i for i, (name, _) in enumerate(model.named_parameters())
            if "norm" in name and not name.startswith(mapped)}


def errors(run, ref, float32_params: set[int] = frozenset()) -> dict:
    """Relative errors of (logits, loss, grads) ``run`` against ``ref``. grads: the worst parameter,
    each relative to its own largest entry but at least 1e-3 of the largest gradient of any
    parameter (a gradient that is exactly 0 in theory, e.g. of q and k at L = 2, is rounding noise
    of either run; its error is then measured on the model's gradient scale)."""
    logits, loss, grads = run
    r_logits, r_loss, r_grads = ref
    finite = [g[~torch.isnan(g)] for g in r_grads]
    scale = max((g.abs().max().item() for g in finite if g.numel()), default=0.0)
    floor = max(1e-3 * scale, 1e-30)
    per_param = [rel(g, r, floor=floor) for g, r in zip(grads, r_grads)]
    out = {"logits": rel(logits, r_logits), "loss": rel(loss, r_loss),
           "grads": max((e for i, e in enumerate(per_param) if i not in float32_params), default=0.0)}
    if float32_params:
        out["float32_grads"] = max(per_param[i] for i in float32_params)
    return out


def subgroups_worker(group, sizes, cases_by_size, refusal_path):
    """Rank function of one launch: for each size P, the first P ranks form a group and run that
    size's cases ((path, dtype name, L, layout) each); then every rank tries the forward-time
    refusals on ``refusal_path``'s model. Rank 0 returns {P: [results], "refusals": [messages
    of each rank]}."""
    dist = torch.distributed
    rank = dist.get_rank()
    results = {}
    for size in sizes:
        sub = dist.new_group(list(range(size)))  # every rank takes part in creating each group
        if rank < size:
            results[size] = [parallel_run(path, getattr(torch, dtype), seq_len, layout, sub)
                             for path, dtype, seq_len, layout in cases_by_size[size]]
        dist.barrier()
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, refusal_messages(group, refusal_path))
    results["refusals"] = messages
    return results if rank == 0 else None


def strategy_worker(group, sizes, cases):
    """Rank function: for each size P, the first P ranks run ``cases`` ((path, dtype name, L,
    layout, strategy) each). Rank 0 returns {P: [results]}."""
    dist = torch.distributed
    results = {}
    for size in sizes:
        sub = dist.new_group(list(range(size)))  # every rank takes part in creating each group
        if dist.get_rank() < size:
            results[size] = [parallel_run(path, getattr(torch, dtype), seq_len, layout, sub, strategy)
                             for path, dtype, seq_len, layout, strategy in cases]
        dist.barrier()
    return results if dist.get_rank() == 0 else None


def refusal_messages(group, path: str) -> dict:
    """Forward-time refusals: the message of each ValueError raised (None if none was)."""
    import longmix.hf as lh

    model = load(path, torch.float64)
    ids, labels = inputs(7)
    messages = {}
    pmodel = lh.parallelize(model, group=group)
    local = lp.shard(ids, group)
    tries = {
        "padding": lambda: pmodel(local, attention_mask=torch.cat(
            [torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)], 1)),
        "cache": lambda: pmodel(local, past_key_values=object()),
        "bad_labels": lambda: pmodel(local, labels=lp.shard(labels, group)[:, :1]),
    }

    def dropout():
        for module in pmodel.modules():
            if hasattr(module, "attention_dropout"):
                module.attention_dropout = 0.5
        return pmodel.train()(local)

    tries["dropout"] = dropout
    for name, call in tries.items():
        try:
            call()
            messages[name] = None
        except ValueError as err:
            messages[name] = str(err)
    return messages
