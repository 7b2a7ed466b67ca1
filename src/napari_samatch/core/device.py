"""Device choice, mixed precision, and what keeps a GPU step from waiting on its host."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch

from .errors import ConfigError


def available_devices() -> list[str]:
    """Devices this machine can run on, best first (for the plugin's drop-down)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for 'auto'; a named device that is missing is a clear error."""
    if name == "auto":
        return torch.device(available_devices()[0])
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ConfigError(f"Unknown device '{name}'. Choose auto, cpu, cuda or mps.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but this machine has no usable GPU. Choose device 'cpu' or 'auto'.")
    if name == "mps" and "mps" not in available_devices():
        raise ConfigError("Apple MPS was asked for but is not available here. Choose device 'cpu' or 'auto'.")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 convs fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, and on CPUs with native bf16 (AMX / AVX512-BF16); float32 elsewhere.

    bf16 needs no loss scaling. On this project's AMX CPU it cut a UNet forward+backward of 8 slices at
    256 x 256 from 4.4 s to 2.7 s (2 threads); on CPUs without native bf16 it would be slower, so it stays off.
    Callers cast logits back to float32 before the losses.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of convolutional weights and images: channels-last on a CPU, where oneDNN's convolutions
    run in their native NHWC layout (the activations follow the weights). Paired on this project's CPU,
    2 threads: the Match model's UniMatch step at 4 + 4 0.70x at 256 px and 0.81x at 128 px, the joint step
    0.84x at 4 + 4 and 0.92x at 1 + 1 (benchmarks/levers.py, 2026-12-04); SAM's image encoder (SamBackend.encode)
    0.8x to encode a slice and 0.72x to train on two (2026-12-06). Unmeasured on CUDA (gpu_levers.py has the
    Match model's rung): unchanged there.
    """
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


# Host-made tensors of a step (random draws, CutMix boxes, sampled indices) reach a GPU through pinned memory without
# blocking (to_device); benchmarks/gpu_levers.py switches this off for its baseline.
PINNED_COPIES = True


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t.to(device)``, and from the host to a GPU through pinned memory without blocking: after a blocking
    host-to-device copy PyTorch synchronises the stream, so each made the host wait for all the work queued on the
    GPU (about 30 a step on the H200, docs/benchmarks.md, "The GPU check"). The same values either way."""
    device = torch.device(device)
    if PINNED_COPIES and device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``F.one_hot(labels, num_classes).permute(0, 3, 1, 2)`` as bool, in the same memory layout, without its range
    check (which reads the labels' extremes back to the host); a label outside 0..num_classes-1 gets no class."""
    return (labels[..., None] == torch.arange(num_classes, device=labels.device)).permute(0, 3, 1, 2)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep large freed tensors in the process instead of handing them back to the kernel (glibc only).

    glibc serves blocks over a few MB with mmap and unmaps them on free, so every 64 MB activation of
    the LiteMedSAM encoder is page-faulted in afresh on every forward pass. On virtual machines a fault
    is expensive: on our 2-core CI machine this halved the encoder time (7.5 s -> 3.8 s per 256x256
    slice) and cut system time by 80 %. The cost is that the process keeps its peak heap, which
    training reaches anyway. Returns whether the setting was applied.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_SAMATCH_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers from <malloc.h>
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    _allocator_tuned = ok
    return ok


def device_summary() -> str:
    """One line for logs and reports: what will compute."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {torch.get_num_threads()} threads"
