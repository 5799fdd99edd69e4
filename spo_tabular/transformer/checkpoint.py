"""Checkpoints of a sequence-mode run: written atomically, loaded with a clear error for a damaged file.

A checkpoint holds the model, optimiser, the frozen sampler copy, the step, the shared data generators,
every rank's process-global RNG states (torch, numpy, python) and the configs it was written with.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..io import atomic_save_torch, load_torch

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or from another configuration."""


def save_checkpoint(path: str, state: dict):
    """Write atomically (temp file, fsync, os.replace) with a sha256 trailer: never a half-written file."""
    atomic_save_torch(state, path)


def load_checkpoint(path: str) -> dict:
    """The checkpoint dict (tensors on CPU); CheckpointError naming the file if it is missing, truncated or corrupt.

    The sha256 trailer catches any changed byte (plain torch.load read most single-byte flips silently).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = load_torch(path, map_location="cpu", weights_only=True)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a version-{CHECKPOINT_VERSION} "
                              "spo_tabular transformer checkpoint")
    return state


def rng_state(device: torch.device) -> dict:
    """This process's global RNG states (torch, CUDA, numpy, python) in types torch.load(weights_only=True) accepts."""
    name, key, *rest = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": (name, torch.as_tensor(key.astype(np.int64)), *rest),
            "python": random.getstate()}


def set_rng_state(state: dict, device: torch.device):
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
