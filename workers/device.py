"""Where a worker computes: one device name ("auto", "cpu", "cuda", "cuda:1") to a torch.device,
for training, pruning and discovery alike."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name torch does not know, or a GPU asked for where torch sees none."""

    option = "--device"  # the CLI option that carries it


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """"auto": the GPU when torch sees one, else the CPU; "cpu"/"cuda"/"cuda:1" as given."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {str(name)!r}: use auto, cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda asked for, but torch sees no GPU; use auto or cpu")
    return dev
