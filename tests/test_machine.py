"""The machine description that every record carries."""
from longmix import machine


def test_a_run_with_limited_instructions_says_so(monkeypatch):
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    plain = machine.describe()
    assert "isa_limits" not in plain and "limited" not in machine.markdown(plain)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX512")
    limited = machine.describe()
    assert limited["isa_limits"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert "limited by MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in machine.markdown(limited)


def test_the_calibration_of_a_limited_run_is_kept_apart(monkeypatch):
    from longmix.attend.calibrate import cache_path

    shape = dict(procs=2, threads_per_rank=1, heads=1, kv_heads=1, head_dim=32)
    plain = machine.describe()
    plain.pop("isa_limits", None)
    limited = {**plain, "isa_limits": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}}
    assert cache_path(plain, **shape) != cache_path(limited, **shape)
