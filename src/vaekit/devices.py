"""Where a model runs and at what precision, and random draws kept out of torch's global
generators: the few device-dependent decisions, in one place.

Checkpoints and weights are always written from CPU copies, so a run trained on a GPU
loads, evaluates and resumes on a CPU (not bit for bit: the random streams differ).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from vaekit.errors import VaekitError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA if there is a GPU, else Apple's MPS, else the CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``; a device this machine lacks is one clear error."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaekitError(f"device must be one of {', '.join(DEVICES)}; got '{name}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise VaekitError(f"device '{name}' requested, but CUDA is not available ({why}); use device 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VaekitError(f"device '{name}' requested, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not _mps_available():
            raise VaekitError(f"device '{name}' requested, but Apple's MPS is not available here; use device 'cpu'")
    elif device.type != "cpu":
        raise VaekitError(f"device must be one of {', '.join(DEVICES)}; got '{name}'")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise VaekitError(f"precision must be one of {', '.join(PRECISIONS)}; got '{precision}'")
    return precision


# CPU features that do bfloat16 matrix products in hardware (AVX512-BF16's dot products, AMX's
# tiles). Without them torch's bf16 GEMMs are emulated and slower than fp32's.
BF16_CPU_FEATURES = ("amx_bf16", "avx512_bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_bf16_features() -> list[str]:
    """Which of :data:`BF16_CPU_FEATURES` this CPU has: torch's own detection (the one its
    kernels dispatch on), or the flags in /proc/cpuinfo where torch does not say."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
        except RuntimeError:
            found = None
        if found:
            return [name for name in BF16_CPU_FEATURES if found.get(name)]
    try:
        with open(CPUINFO, encoding="utf-8") as file:
            for line in file:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in BF16_CPU_FEATURES if name in flags]
    except OSError:
        pass
    return []


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision, why) for ``precision = "auto"``: bf16 autocast on a CPU that does bf16
    matrix products in hardware, fp32 elsewhere (GPUs included: measured on CPUs only)."""
    if device.type != "cpu":
        return "fp32", f"auto precision uses bf16 on CPUs with {' or '.join(BF16_CPU_FEATURES)} only"
    features = cpu_bf16_features()
    if features:
        return "bf16", f"this CPU has {', '.join(features)}"
    return "fp32", f"this CPU has no {' or '.join(BF16_CPU_FEATURES)}"


COMPILERS = ("g++", "clang++", "c++")  # what inductor's CPU code generation can call


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile would use on a CPU ($CXX, else the first of COMPILERS
    found), or None."""
    for name in (os.environ.get("CXX"), *COMPILERS):
        if name and shutil.which(name):
            return name
    return None


def auto_compile(device: torch.device, precision: str) -> tuple[bool, str]:
    """(compile?, why) for ``compile = "auto"``: on for bf16 on a CPU with bf16 units (AMX or
    AVX512-BF16) and a C++ compiler, where it was measured to pay (docs/performance.md: 1.21x
    on an AMX Xeon, 1.13-1.14x on an AVX512-BF16 EPYC); off elsewhere (fp32 gained 0-8 % on
    the Xeon and an AVX2 EPYC, measured while the objective's graph still broke in two)."""
    if device.type != "cpu":
        return False, "auto compile is measured on CPUs only"
    if precision != "bf16":
        return False, f"it pays with bf16 only, this run is {precision}"
    features = cpu_bf16_features()
    if not features:
        return False, "it pays with bf16 on CPUs with bf16 units only; this CPU has none"
    found = cpu_compiler()
    if found:
        return True, f"bf16 on a CPU with {', '.join(features)}, C++ compiler {found}"
    return False, f"no C++ compiler ({', '.join(COMPILERS)}) on the PATH"


def warn_emulated_bf16(device: torch.device, precision: str) -> None:
    """A warning where bf16 would run without hardware support: such CPUs emulate bf16
    matrix products, far slower than fp32 (1.9 against 70 GFLOP/s on an AVX2 AMD EPYC)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_features():
        warnings.warn(f"bf16 on a CPU without {' or '.join(BF16_CPU_FEATURES)}: its matrix products are "
                      "emulated and run many times slower than fp32; use precision fp32 (or auto, which "
                      "picks bf16 only where the CPU has it)", RuntimeWarning, stacklevel=3)


class CompiledObjective:
    """An objective ``(model, batch) -> (loss, terms)`` run through ``torch.compile``, the
    same maths with the step's elementwise work fused. Where compilation fails (no C++
    compiler, an op inductor cannot handle) it warns once and runs the objective as it is.

    The batch's ``epochs_done`` reaches the compiled objective as a 0-d tensor: a Python
    float would be baked into the graph and, under KL warm-up, recompile it every step.
    The first call runs eagerly: there torch.distributions' KL lookup fills its memo (tracing
    the lookup itself breaks the graph). Inside the compiled graph the reparameterised noise
    comes from torch's generator, not the step's keyed stream (:mod:`vaekit.noise`), whose
    draw from a ``torch.Generator`` cannot be traced: a graph split there cost the whole gain.
    Resume and the run record see the objective itself (``eager``)."""

    def __init__(self, objective: Callable):
        self.eager = objective
        self.compiled = torch.compile(objective, dynamic=False)
        self.failed: str | None = None
        self.warm = False

    def __call__(self, model, batch):
        if not self.warm:
            self.warm = True
            return self.eager(model, batch)
        if self.failed is None:
            try:
                return self.compiled(model, dataclasses.replace(
                    batch, epochs_done=torch.tensor(float(batch.epochs_done), dtype=torch.float64)))
            except torch._dynamo.exc.TorchDynamoException as err:  # BackendCompilerFailed and kin
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                warnings.warn(f"torch.compile failed ({self.failed[:300]}); training on without it",
                              RuntimeWarning, stacklevel=2)
        return self.eager(model, batch)


def uncompiled(objective: Callable) -> Callable:
    """The objective a :class:`CompiledObjective` compiles (any other objective as it is): what
    the run record describes, resume compares and fit's ELBO test looks at."""
    return objective.eager if isinstance(objective, CompiledObjective) else objective


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass (matrix products in bfloat16, weights and
    optimiser in float32; models bring the likelihood and KL back to float32), or nothing."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def evaluation_mode(model: torch.nn.Module, gradients: bool = True) -> Iterator[None]:
    """``model.eval()`` inside (and no gradients unless ``gradients``); the model's own
    training mode restored on the way out, after an error too."""
    was_training = model.training
    model.eval()
    try:
        with nullcontext() if gradients else torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextmanager
def forked_rng(device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Torch's global generators (the CPU's and ``device``'s) saved on the way in and
    restored on the way out, seeded with ``seed`` inside if given: draws inside are
    reproducible and leave the caller's random state as it was."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def seed_draws(device: torch.device, seed: int) -> None:
    """Seed torch's CPU generator and ``device``'s (the ones a model there draws from), and
    no other device's."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def mixed_seed(*words: int) -> int:
    """A 62-bit seed mixed from ``words`` (numpy's SeedSequence): streams seeded from
    different words do not overlap the way ``seed + i`` streams would."""
    import numpy as np

    state = np.random.SeedSequence([w & (2**63 - 1) for w in words]).generate_state(2, np.uint32)
    return int(state[0]) << 30 ^ int(state[1])


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
