"""generate() on transformers causal LMs over 1, 2 and 3 ranks equals transformers itself.

Small random models of six families (``tests/hf/hf_models.py``: Llama, Qwen3, Mistral with a
3-key sliding window, Gemma3 alternating a 4-key window and full attention, Mamba, Jamba) and
three more under one layout each (GPT-2: a learned position table; Mamba2; Qwen3-Next: a gated
DeltaNet layer, attention and MoE), saved with ``save_pretrained`` and loaded back, float64, run with transformers' float32 casts off
(``longmix.hf.float64``) on both sides so that float64 rounding is all that can differ:

- the logits of every generated position equal transformers' single-process full forward over
  prompt + generated tokens (SDPA attention: eager's softmax runs in float32) to 1e-10;
- greedy tokens equal transformers' own ``model.generate(do_sample=False)`` with the
  end-of-sequence stop disabled (``generation_config.eos_token_id = None``: ``min_new_tokens``
  would instead forbid the EOS token and change the tokens);
- every rank returns the same tokens; each rank's cache bytes equal ``expected_cache_bytes``
  (the formula from the layout alone), the KV caches summed over ranks hold exactly one
  process's bytes (full attention), a Mamba state is the same size on every rank.

P in {1, 2, 3} are the first P ranks of one 3-rank launch; prompts of 7 tokens under both
layouts and of 2 tokens (fewer than P = 3: a rank without prefill rows).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
from hf_models import VOCAB, save_families  # noqa: E402
from hf_models import load as load_family  # noqa: E402

from longmix.generate import expected_cache_bytes  # noqa: E402
from longmix.hf.float64 import float32_casts_off  # noqa: E402
from longmix.parallel.launch import run_local  # noqa: E402

SIZES = (1, 2, 3)
FAMILIES = ("llama", "qwen3", "mistral_window", "gemma3", "mamba", "jamba")
EXTRA = {"gpt2": "contiguous", "mamba2": "zigzag", "qwen3_next": "zigzag"}  # name -> layout
STATE_ONLY = ("mamba", "mamba2")
WINDOWED = ("mistral_window", "gemma3")
SHORT_FAMILIES = ("llama", "gemma3", "mamba")  # a prompt shorter than P: time
NEW_TOKENS = 6  # more than Mistral's 3-key window: decoding evicts keys
TOL = 1e-10


def prompt(length: int, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + length)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def extra_configs() -> dict:
    from transformers import GPT2Config, Mamba2Config, Qwen3NextConfig

    return {
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        "mamba2": Mamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                               conv_kernel=3, expand=2, head_dim=8, num_heads=8, n_groups=1,
                               chunk_size=4),
        "qwen3_next": Qwen3NextConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            layer_types=["linear_attention", "full_attention"], linear_num_value_heads=2,
            linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8,
            num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16,
            shared_expert_intermediate_size=16),
    }


def load(path: str, dtype: torch.dtype, attn: str = "eager"):
    """``hf_models.load``, with the eager experts loop for Qwen3-Next's MoE in float64 too."""
    if "qwen3_next" not in path:
        return load_family(path, dtype, attn)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn,
                                                experts_implementation="eager").eval()


def cases() -> list[tuple[str, int, str]]:
    out = [(name, 7, layout) for name in FAMILIES for layout in ("contiguous", "zigzag")]
    out += [(name, 7, layout) for name, layout in EXTRA.items()]
    return out + [(name, 2, "zigzag") for name in SHORT_FAMILIES]


#: sampled cases: (name, prompt length, layout, generate's sampling options)
SAMPLED = [("qwen3", 7, "zigzag", dict(temperature=0.9, top_k=8, top_p=0.9, seed=3)),
           ("jamba", 5, "contiguous", dict(temperature=1.3, top_p=0.95, seed=7))]


def all_cases() -> list[tuple[str, int, str, dict]]:
    return [(*case, {}) for case in cases()] + SAMPLED


def worker(group, sizes, paths, case_list):
    """Every rank: for each size P the first P ranks generate every case (float32 casts off).
    Returns {P: [(tokens, logits, cache bytes, forms), ...]} for the sizes this rank took part in."""
    from longmix.generate import GenerationStats, generate

    dist = torch.distributed
    rank = dist.get_rank()
    models = {name: load(path, torch.float64) for name, path in paths.items()}
    results = {}
    for size in sizes:
        sub = dist.new_group(list(range(size)))  # every rank takes part in creating each group
        if rank < size:
            results[size] = []
            for name, length, layout, sampling in case_list:
                stats = GenerationStats()
                with float32_casts_off():
                    tokens, logits = generate(models[name], prompt(length), NEW_TOKENS, group=sub,
                                              layout=layout, output_logits=True, stats=stats,
                                              **sampling)
                results[size].append((tokens, logits, stats.cache_bytes, stats.forms))
        dist.barrier()
    return results


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("hf_generate")
    out = save_families(root, names=FAMILIES)
    for i, (name, config) in enumerate(extra_configs().items()):
        torch.manual_seed(100 + i)
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def launched(paths):
    return run_local(worker, max(SIZES), (SIZES, paths, all_cases()), timeout=400,
                     collective_timeout=120)


@torch.no_grad()
def references(path: str, name: str, ids: torch.Tensor, tokens: torch.Tensor):
    """transformers' full-forward logits at the new positions and its own greedy tokens."""
    # SDPA: eager attention takes its softmax in float32 (Mamba has no attention: eager)
    model = load(path, torch.float64, attn="eager" if name in STATE_ONLY else "sdpa")
    model.generation_config.eos_token_id = None  # no end-of-sequence stop: N tokens, EOS included
    length = ids.shape[1]
    with float32_casts_off():
        full = model(torch.cat([ids, tokens], 1), use_cache=False).logits
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=NEW_TOKENS, pad_token_id=0)[:, length:]
    return full[:, length - 1:length - 1 + NEW_TOKENS], greedy


def test_generate_equals_transformers(launched, paths):
    problems = []
    for i, (name, length, layout) in enumerate(cases()):
        ids = prompt(length)
        one = launched[0][1][i]
        logits_ref, greedy = references(paths[name], name, ids, one[0])
        model = load(paths[name], torch.float64)
        for size in SIZES:
            runs = [launched[r][size][i] for r in range(size)]
            where = f"{name} L={length} {layout} P={size}"
            tokens, logits, _, forms = runs[0]
            if any(not torch.equal(r[0], tokens) for r in runs):
                problems.append(f"{where}: ranks returned different tokens")
            if not torch.equal(tokens, greedy):
                problems.append(f"{where}: tokens {tokens.tolist()} != transformers' greedy "
                                f"{greedy.tolist()}")
            err = (logits - logits_ref).abs().max().item()
            if not err <= TOL:
                problems.append(f"{where}: logits differ from transformers' forward by {err:.3g}")
            per_rank = [r[2] for r in runs]
            if name in STATE_ONLY and per_rank != [one[2]] * size:
                problems.append(f"{where}: Mamba state bytes per rank {per_rank}, one process {one[2]}")
            if name in ("llama", "qwen3", "gpt2") and sum(per_rank) != one[2]:
                problems.append(f"{where}: KV bytes per rank {per_rank} do not sum to one "
                                f"process's {one[2]}")
            want_bytes = [expected_cache_bytes(model, length, NEW_TOKENS, size, r, layout, batch=2)
                          for r in range(size)]
            if per_rank != want_bytes:
                problems.append(f"{where}: cache bytes per rank {per_rank}, the formula says "
                                f"{want_bytes}")
            want = {"attention"} if name not in STATE_ONLY else set()
            want |= {"state"} if name in STATE_ONLY + ("jamba", "qwen3_next") else set()
            if set(forms) != want:
                problems.append(f"{where}: layers ran as {forms}, expected {want}")
    assert not problems, "\n".join(problems)


def test_sampling_draws_the_same_tokens_on_every_rank_and_world_size(launched, paths):
    """The same seed draws the same tokens on every rank and for P = 1, 2, 3 (the logits are
    bitwise the same on every rank, and agree with one process to float64 rounding), and the
    logits at the drawn tokens equal transformers' full forward."""
    for j, (name, length, layout, sampling) in enumerate(SAMPLED):
        i = len(cases()) + j
        one = launched[0][1][i][0]
        assert len(set(one.flatten().tolist())) > 1, name  # it sampled, not a constant
        model = load(paths[name], torch.float64, attn="sdpa")
        ids = prompt(length)
        with float32_casts_off(), torch.no_grad():
            full = model(torch.cat([ids, one], 1), use_cache=False).logits
        ref = full[:, length - 1:length - 1 + NEW_TOKENS]
        for size in SIZES:
            for rank in range(size):
                tokens, logits = launched[rank][size][i][:2]
                assert torch.equal(tokens, one), (name, size, rank)
                assert (logits - ref).abs().max().item() <= TOL, (name, size, rank)


def test_sliding_window_keeps_only_the_window(launched):
    """Mistral (a 3-key window on both layers): a rank's buffers hold at most window - 1 prompt
    rows and window new keys per layer (``cache.kv_capacity``), whatever L and P; one process
    exactly that (positions 5, 6 of the prompt and 3 of the 5 keys fed back)."""
    i = cases().index(("mistral_window", 7, "contiguous"))
    row = 2 * 2 * 2 * 8 * 8 + 8  # batch 2 x (k, v) x 2 kv heads x head_dim 8 x float64 + position
    bound = 2 * (2 + 3) * row    # 2 layers
    assert launched[0][1][i][2] == bound
    for size in SIZES:
        assert all(launched[r][size][i][2] <= bound for r in range(size))


def _tiny(config_class, **options):
    from transformers import AutoModelForCausalLM

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                  head_dim=8)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**common, **options)).double().eval()


def test_models_it_cannot_run_are_refused_naming_the_class():
    from transformers import Gemma2Config, LlamaConfig

    from longmix.generate import generate

    ids = prompt(4, batch=1)
    llama = _tiny(LlamaConfig)
    with pytest.raises(ValueError, match="LlamaModel has no language-model head"):
        generate(llama.model, ids, 2)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM is in training mode .*model.eval\(\)"):
        generate(llama.train(), ids, 2)
    llama.eval()
    with pytest.raises(ValueError, match="Gemma2ForCausalLM cannot run sharded: .*soft-capping"):
        generate(_tiny(Gemma2Config, attn_logit_softcapping=50.0), ids, 2)
    with pytest.raises(ValueError, match=r"plus max_new_tokens \(13\) exceeds the model's "
                                         r"max_position_embeddings=16"):
        generate(llama, ids, 13)
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {VOCAB}\)"):
        generate(llama, torch.full((1, 3), VOCAB), 2)
    tokens, logits = generate(llama, ids, 0, output_logits=True)
    assert tokens.shape == (1, 0) and logits.shape == (1, 0, VOCAB)
    assert generate(llama, ids, 12).shape == (1, 12)  # exactly the limit fits


def _save_word_tokenizer(folder) -> None:
    """A word-level tokenizer over VOCAB words "w0".."w96" (built here: nothing downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0").save_pretrained(folder)


def test_cli_generates_from_a_saved_directory(paths, tmp_path, capsys):
    """`longmix generate --hf-model DIR` on 2 ranks: ids or text through the saved tokenizer,
    every new token transformers' greedy choice (float32, up to rounding) given the ones before."""
    import json
    import shutil

    from longmix.cli import main

    folder = tmp_path / "llama"
    shutil.copytree(paths["llama"], folder)
    assert main(["generate", "--hf-model", str(folder), "--prompt", "w1 w2", "--quiet"]) == 2
    assert "has no tokenizer saved with it" in capsys.readouterr().err
    _save_word_tokenizer(folder)
    report_path = tmp_path / "out.json"
    code = main(["generate", "--hf-model", str(folder), "--prompt", "w5 w17 w3 w60 w8",
                 "--max-new-tokens", "4", "--procs", "2", "--layout", "zigzag",
                 "--json", str(report_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(report_path.read_text())
    assert report["model_class"] == "LlamaForCausalLM" and report["world_size"] == 2
    assert report["text"] == " ".join(f"w{t}" for t in report["tokens"])
    assert captured.out.startswith(report["text"])
    model = load(str(folder), torch.float32)
    ids = torch.tensor([[5, 17, 3, 60, 8]])
    tokens = torch.tensor([report["tokens"]])
    with torch.no_grad():
        logits = model(torch.cat([ids, tokens], 1), use_cache=False).logits[0, 4:8]
    chosen = logits.gather(-1, tokens[0, :, None])[:, 0]
    assert (chosen >= logits.max(-1).values - 1e-5).all(), (report["tokens"], logits)
    assert main(["generate", "--hf-model", str(tmp_path / "none"), "--prompt-ids", "1"]) == 2
    assert "has no config.json" in capsys.readouterr().err
