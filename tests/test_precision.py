"""`--precision auto`: bf16 only where the hardware does it natively, and on GPUs by compute capability.

The rule is a pure function of the CPU's feature flags, so every kind of CPU is pinned here
whatever machine runs the tests; the flag reader is tested on written cpuinfo files.
"""

import pytest
import torch

from raycifar.recipe import runtime as engine
from raycifar.recipe.runtime import (Runtime, cpu_auto_precision, cpu_flags, describe_precision,
                                     gpu_auto_precision, resolve_precision)

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


GPUS = [  # (compute capability, name, auto's choice)
    ((6, 0), "Tesla P100-PCIE-16GB", "fp32"),   # Pascal: no tensor cores
    ((7, 0), "Tesla V100-SXM2-16GB", "fp16"),   # Volta: fp16 tensor cores, bf16 emulated
    ((7, 5), "Tesla T4", "fp16"),               # Turing (Colab's free GPU)
    ((8, 0), "NVIDIA A100-SXM4-40GB", "bf16"),  # Ampere
    ((8, 9), "NVIDIA L4", "bf16"),              # Ada
    ((9, 0), "NVIDIA H200", "bf16"),            # Hopper
]


def pretend_gpu(monkeypatch, capability, name, hip=None):
    """torch's device queries answer as a GPU of this capability would; nothing else of CUDA
    may be asked (is_bf16_supported counts emulation as support, so it must not decide)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda *a, **k: pytest.fail("auto must not ask is_bf16_supported"))
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(engine, "cpu_flags", lambda: pytest.fail("a GPU ignores CPU flags"))


@pytest.mark.parametrize("capability, name, want", GPUS)
def test_gpu_auto_follows_the_compute_capability(monkeypatch, capability, name, want):
    pretend_gpu(monkeypatch, capability, name)
    cuda = torch.device("cuda", 0)
    assert resolve_precision("auto", cuda) == want
    line = describe_precision("auto", cuda)
    major, minor = capability
    assert line.startswith(f"precision auto -> {want}: {name}, compute capability "
                           f"{major}.{minor}: ")
    assert resolve_precision("fp32", cuda) == "fp32"  # an explicit choice is kept


def test_gpu_reasons_say_why():
    assert "no native bf16 (emulated, slower than fp32)" in gpu_auto_precision((7, 5), "T4")[1]
    assert "fp16 with loss scaling" in gpu_auto_precision((7, 0), "V100")[1]
    assert "bf16 on its tensor cores" in gpu_auto_precision((8, 0), "A100")[1]
    assert "no tensor cores" in gpu_auto_precision((6, 1), "GTX 1080")[1]
    assert gpu_auto_precision((9, 4), "MI300X", rocm=True)[0] == "bf16"


@pytest.mark.parametrize("capability, name, want", GPUS[1:3] + GPUS[-1:])
def test_runtime_on_a_gpu_resolves_auto_and_benchmarks_cudnn(monkeypatch, capability, name,
                                                             want):
    pretend_gpu(monkeypatch, capability, name)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    rt = Runtime.on(torch.device("cuda", 0), "auto")
    assert rt.precision == want
    assert torch.backends.cudnn.benchmark is True  # fixed 32x32 inputs: time kernels once
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    Runtime.on(CPU, "fp32")
    assert torch.backends.cudnn.benchmark is False  # a CPU run leaves cuDNN alone


def _learner(precision):
    from torch import nn

    from raycifar.recipe.config import TrainConfig
    from raycifar.recipe.engine import Learner, make_optimizer
    from raycifar.recipe.schedule import OneCycle

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    rt = Runtime(CPU, precision)
    opt = make_optimizer(TrainConfig(lr_max=0.1, lr_min=0.01), model, rt)  # fused in fp16
    return Learner(model, opt, OneCycle(0.01, 0.1, 2, 1, 4).build(opt), rt.scaler(),
                   nn.CrossEntropyLoss(), rt)


@pytest.mark.parametrize("then, now", [("fp32", "fp16"), ("bf16", "fp16"), ("fp16", "fp32"),
                                       ("fp16", "fp16")])
def test_a_checkpoint_resumes_under_another_precision(then, now):
    """`auto` can mean fp16 where the run began in fp32 or bf16 (a T4 after an A100): the
    loss scale starts afresh; the other way the scaler's state is not needed."""
    from raycifar.recipe.state import RunClock, TrainState

    before = _learner(then)
    x, y = torch.randn(8, 1, 3, 4), torch.randint(0, 3, (8,))
    before.step(x, y)
    if then == "fp16":
        before.scaler.update(1024.0)  # a scale that differs from a fresh scaler's
    state = TrainState.capture(1, before, {"train_seconds": 1.0,
                               "eval_seconds": 0.0, "record_seconds": 0.0}, RunClock(), {})
    after = _learner(now)
    state.restore(after)
    for a, b in zip(before.model.parameters(), after.model.parameters()):
        assert torch.equal(a, b)
    assert after.scheduler.last_epoch == 1
    if now == "fp16":
        assert after.scaler.get_scale() == (1024.0 if then == "fp16" else 65536.0)
    after.step(x, y)  # and it trains on
