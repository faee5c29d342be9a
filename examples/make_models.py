"""Build the example classifier's TorchScript files, deterministically from a seed.

The classifier tells apart ten clusters of 64-dimensional points: `sample` draws
points around ten fixed prototypes (the same prototypes for every version), and
each version is a small MLP trained on them from its own seed, so versions agree
on clear inputs and differ on ambiguous ones. The committed model.pt files were made
with ``python examples/make_models.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

FEATURES, CLASSES = 64, 10
REPOSITORY = Path(__file__).resolve().parent / "models"
# version -> (training seed, steps): version 2 trains less, on other draws
VERSIONS = {1: (1, 400), 2: (2, 25)}


def prototypes() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 1.0, size=(CLASSES, FEATURES)).astype(np.float32)


def sample(n: int, rng: np.random.Generator, noise: float = 3.0,
           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points and their true classes; ``weights`` skews the class mix (drift)."""
    labels = rng.choice(CLASSES, size=n, p=weights)
    points = prototypes()[labels] + rng.normal(0.0, noise, size=(n, FEATURES)).astype(np.float32)
    return points.astype(np.float32), labels


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, 32)
        self.out = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.out(torch.relu(self.hidden(x))), dim=-1)


def train(seed: int, steps: int) -> Classifier:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        x, y = sample(256, rng)
        logits = model.out(torch.relu(model.hidden(torch.from_numpy(x))))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for version, (seed, steps) in VERSIONS.items():
        path = args.repository / "classifier" / str(version) / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(torch.jit.script(train(seed, steps)), str(path))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
