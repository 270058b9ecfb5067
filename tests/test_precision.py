"""`--precision auto`: bf16 only where the hardware does it natively (issue 23).

The rule is a pure function of the CPU's feature flags, so every kind of CPU is pinned here
whatever machine runs the tests; the flag reader is tested on written cpuinfo files.
"""

import pytest
import torch

from raycifar import runtime as engine
from raycifar.runtime import cpu_auto_precision, cpu_flags, describe_precision, resolve_precision

BASE_X86 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma"
AVX2 = frozenset(f"{BASE_X86} avx2".split())
AVX512 = AVX2 | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni"}
ARM = frozenset("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp".split())
CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, want", [
    (AVX2, "fp32"),                                     # AVX2 only: ~20x slower emulated
    (AVX512, "fp32"),                                   # AVX-512 without bf16: 2.5x slower
    (AVX512 | {"avx512_bf16"}, "bf16"),                 # Cooper Lake, Zen 4
    (AVX512 | {"amx_bf16", "amx_tile"}, "bf16"),        # AMX without avx512_bf16 listed
    (AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),  # Sapphire Rapids
    (AVX2 | {"avx_vnni", "avx512_fp16"}, "fp32"),       # near-misses are not bf16
    (ARM, "fp32"),                                      # aarch64 without BF16 (Graviton2)
    (ARM | {"bf16", "svebf16", "i8mm"}, "bf16"),        # aarch64 with BF16 (Graviton3)
    (frozenset(), "fp32"),                              # a flags line with nothing on it
    (None, "fp32"),                                     # flags unreadable: the safe choice
])
def test_auto_picks_bf16_only_with_native_bf16_flags(flags, want):
    assert cpu_auto_precision(flags)[0] == want


def test_reasons_name_the_flag_or_its_absence():
    assert cpu_auto_precision(AVX512 | {"amx_bf16"})[1] == \
        "this CPU does bf16 natively (amx_bf16 flag)"
    assert "no native bf16 (no avx512_bf16/amx_bf16 flag" in cpu_auto_precision(AVX512)[1]
    assert "bf16 would be emulated" in cpu_auto_precision(AVX2)[1]
    assert "cannot be read" in cpu_auto_precision(None)[1]


X86_CPUINFO = f"""processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: {" ".join(sorted(AVX512))} avx512_bf16
vmx flags\t: vnmi preemption_timer
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: {" ".join(sorted(AVX512))} avx512_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 svebf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, want", [
    (X86_CPUINFO, AVX512 | {"avx512_bf16"}),            # `flags`, not `vmx flags`
    (ARM_CPUINFO, frozenset("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 svebf16"
                            .split())),
    ("processor\t: 0\nmodel name\t: something\n", None),  # no flags line
])
def test_cpu_flags_reads_x86_and_aarch64_cpuinfo(tmp_path, text, want):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_flags(str(path)) == want


def test_cpu_flags_is_none_without_cpuinfo_and_is_read_once(tmp_path):
    assert cpu_flags(str(tmp_path / "absent")) is None          # macOS, Windows
    path = tmp_path / "cpuinfo"
    path.write_text(X86_CPUINFO)
    first = cpu_flags(str(path))
    path.write_text(ARM_CPUINFO)
    assert cpu_flags(str(path)) is first                         # cached, not re-read


@pytest.mark.parametrize("flags, want", [(AVX2, "fp32"), (AVX512, "fp32"),
                                         (AVX512 | {"avx512_bf16"}, "bf16"), (None, "fp32")])
def test_resolve_and_describe_follow_the_flags_on_cpu(monkeypatch, flags, want):
    monkeypatch.setattr(engine, "cpu_flags", lambda: flags)
    assert resolve_precision("auto", CPU) == want
    assert describe_precision("auto", CPU).startswith(f"precision auto -> {want}: ")
    # an explicit precision is kept whatever the CPU
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
    assert describe_precision("fp16", CPU) == "precision fp16: set explicitly (not auto)"


def test_auto_never_asks_the_mkldnn_check_that_counts_emulation(monkeypatch):
    monkeypatch.setattr(engine, "cpu_flags", lambda: AVX512)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                        raising=False)
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("bf16, want", [(True, "bf16"), (False, "fp16")])
def test_gpu_auto_is_bf16_where_supported_else_fp16(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(engine, "cpu_flags", lambda: pytest.fail("a GPU ignores CPU flags"))
    assert resolve_precision("auto", torch.device("cuda")) == want
    assert describe_precision("auto", torch.device("cuda")).startswith(f"precision auto -> {want}")
