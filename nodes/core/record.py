"""What one sampling run did: every guided step's log and its subject maps, for the
heatmaps, the plot and the JSON log."""
import json
from dataclasses import dataclass, field

import torch

from .excite import StepLog


@dataclass
class AttentionRecord:
    model: str = ""                                  # the model family it ran on
    labels: list = field(default_factory=list)       # one per subject
    thresholds: dict = field(default_factory=dict)   # sampled step -> target peak
    steps: int = 0                                   # steps sampled
    logs: list = field(default_factory=list)         # StepLog of each guided step
    maps: list = field(default_factory=list)         # (B, S, h, w) of each guided step, CPU fp32
    guidance_pass: str = ""                          # "CUDA graph", or "eager: " and why
    guidance_memory: str = ""                        # "fast" or "lean", and why where auto chose
    loss: str = ""                                   # the loss that ran
    pixels_per_cell: int = 8                         # the family's VAE: image pixels per latent cell

    def start(self, model: str, labels: list[str], thresholds: dict[int, float], steps: int,
              loss: str = "attend_and_excite", pixels_per_cell: int = 8):
        """Clears what an earlier run left (a SAMPLER's record is reused by every run)."""
        self.model, self.labels, self.thresholds, self.steps = model, list(labels), dict(thresholds), steps
        self.loss, self.pixels_per_cell = loss, pixels_per_cell
        self.logs, self.maps, self.guidance_pass, self.guidance_memory = [], [], "", ""

    def add(self, log: StepLog, maps: torch.Tensor):
        """maps: the subject maps of the step's last evaluation, the one its update used."""
        self.logs.append(log)
        self.maps.append(maps.detach().float().cpu())

    def require_maps(self):
        if not self.maps:
            raise ValueError("no guided step was recorded: sample with this Attend-and-Excite sampler first, "
                             "with steps_to_alter above 0 or a threshold step within the steps")

    def aggregate(self) -> torch.Tensor:
        """(B, S, h, w): the mean of the guided steps' maps."""
        self.require_maps()
        return torch.stack(self.maps).mean(dim=0)

    def select(self, step: int) -> tuple[torch.Tensor, str]:
        """(maps, caption): step 0 gives the mean over the guided steps; step n (1-based,
        as the progress text counts) the guided step nearest to it."""
        if step <= 0:
            mean, first, last = self.aggregate(), self.logs[0].step + 1, self.logs[-1].step + 1
            return mean, f"mean of steps {first}-{last}" if last > first else f"step {first}"
        self.require_maps()
        index = min(range(len(self.logs)), key=lambda i: (abs(self.logs[i].step + 1 - step), i))
        return self.maps[index], f"step {self.logs[index].step + 1}"

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "loss": self.loss, "subjects": self.labels,
                           "thresholds": {str(k): v for k, v in self.thresholds.items()},
                           "guidance_pass": self.guidance_pass, "guidance_memory": self.guidance_memory,
                           "steps": [vars(log) for log in self.logs]})
