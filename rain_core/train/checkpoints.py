"""Checkpoints of a run: safetensors + JSON, nothing pickled; the optimiser state flattened to tensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The optimizer's state as safetensors (tensors) + JSON (the rest); nested per-parameter entries (bitsandbytes
    keeps its 8-bit state in a dict) are flattened to dotted names."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}

    def flatten(prefix: str, entries: dict) -> None:
        for key, value in entries.items():
            name = f"{prefix}.{key}"
            if isinstance(value, dict):
                flatten(name, value)
            elif torch.is_tensor(value):  # a copy each: bitsandbytes shares its quantisation maps across parameters
                tensors[name] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[name] = value

    for index, entries in state["state"].items():
        flatten(str(index), entries)
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(folder / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, *path, key = name.split(".")
        entries = state.setdefault(int(index), {})
        for part in path:
            entries = entries.setdefault(part, {})
        entries[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def latest_checkpoint(output: str | Path) -> Path | None:
    folders = sorted(Path(output, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [f for f in folders if (f / "trainer_state.json").exists()]
    return complete[-1] if complete else None

