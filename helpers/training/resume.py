"""An interrupted run's resume point: after every epoch ``<model>.last.pt`` keeps the weights,
optimiser, loss scaler and progress, and a run of the very same configuration and data goes on
exactly where it stopped. Split from :mod:`.loop`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.accel import load_scaler_state
from ..core.repro import atomic_path
from .config import TrainConfig
from .learner import Learner

RESUME_FORMAT = "aidetect-resume"


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class Progress:
    """How far a run has got: what ``<model>.last.pt`` keeps so that a resumed run goes on
    exactly where it stopped."""

    epoch: int = 0  # epochs done
    rows: list[dict] = field(default_factory=list)  # the history, one dict per epoch
    best: dict | None = None  # the best validation metrics so far, with their epoch
    best_state: dict | None = None  # the weights that had them (on the CPU)
    bad_epochs: int = 0  # epochs since the best one, for early stopping

    def stopped(self, patience: int | None) -> bool:
        return bool(patience) and self.bad_epochs >= patience


def resume_progress(last_path: Path, ckpt_path: Path, config_dict: dict, fingerprint: str, learner: Learner,
            announce: bool) -> Progress:
    """The progress saved in ``last_path``, loaded into ``learner``, if it is of this very
    configuration and data; a fresh start otherwise."""
    if not last_path.is_file():
        return Progress()
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    saved = state.get("config", {})  # saved before a field existed: it takes the field's default
    same = set(saved) <= set(config_dict) and asdict(TrainConfig.from_dict(saved)) == config_dict
    if not (state.get("format") == RESUME_FORMAT and same
            and state["data_fingerprint"] == fingerprint):
        if announce:
            print(f"{last_path} is from another configuration or data: starting afresh")
        return Progress()
    learner.net.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    load_scaler_state(learner.scaler, state.get("scaler"))  # saved in another precision: a fresh scaler
    if announce:
        print(f"resuming from {last_path} after epoch {state['epoch']}")
    return Progress(epoch=state["epoch"], rows=state["history"], best=state["best"],
                     best_state=torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"],
                     bad_epochs=state["bad_epochs"])


def save_resume_point(path: Path, config_dict: dict, fingerprint: str, learner: Learner,
                       done: Progress) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": RESUME_FORMAT, "config": config_dict, "data_fingerprint": fingerprint,
                    "epoch": done.epoch, "model": cpu_state(learner.net),
                    "optimizer": learner.optimizer.state_dict(), "scaler": learner.scaler.state_dict(),
                    "history": done.rows, "best": done.best, "bad_epochs": done.bad_epochs}, tmp)
