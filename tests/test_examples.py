"""The bundled example repository: what the README's tour and the benchmark rely on."""

from __future__ import annotations

import sys

import numpy as np
import torch
import tritonclient.http as httpclient

from .conftest import EXAMPLES, ROOT, RunningServer

sys.path.insert(0, str(ROOT / "examples"))
import make_models  # examples/make_models.py, through the sys.path entry above


def test_example_files_stay_small() -> None:
    for path in EXAMPLES.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 1_000_000, path


def test_classifier_versions_classify_the_clusters_and_disagree_on_hard_points(
        examples_server: RunningServer) -> None:
    x, truth = make_models.sample(512, np.random.default_rng(7))
    client = httpclient.InferenceServerClient(examples_server.url)
    predictions = {}
    for version in ("1", "2"):
        inp = httpclient.InferInput("INPUT__0", [64, 64], "FP32")
        rows = []
        for start in range(0, 512, 64):
            inp.set_data_from_numpy(x[start:start + 64])
            rows.append(client.infer("classifier", [inp], model_version=version).as_numpy("OUTPUT__0"))
        predictions[version] = np.concatenate(rows).argmax(axis=1)
    for version, predicted in predictions.items():
        assert (predicted == truth).mean() > 0.7, version
    agreement = (predictions["1"] == predictions["2"]).mean()
    assert 0.6 < agreement < 0.98


def test_the_generator_builds_the_committed_architecture() -> None:
    committed = torch.jit.load(str(EXAMPLES / "classifier" / "1" / "model.pt"))
    fresh = make_models.train(seed=1, steps=1)
    assert {k: v.shape for k, v in committed.state_dict().items()} == \
        {k: v.shape for k, v in fresh.state_dict().items()}
