"""Ensembles (``platform: "ensemble"``): Triton's pipelines of models, run in-process.

`plan_of` checks an ensemble's ``ensemble_scheduling`` on its own, `Plan.check_models`
against its step models once they are loaded, and `EnsembleScheduler` runs each request
through the steps, every step in its model's own batcher.

Example config.pbtxt::

    name: "pipeline"
    platform: "ensemble"
    max_batch_size: 8
    input [ { name: "RAW", data_type: TYPE_UINT8, dims: [ -1 ] } ]
    output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 10 ] } ]
    ensemble_scheduling { step [
      { model_name: "preprocess" model_version: -1
        input_map { key: "RAW" value: "RAW" } output_map { key: "PIXELS" value: "pixels" } },
      { model_name: "classifier" model_version: -1
        input_map { key: "INPUT" value: "pixels" } output_map { key: "PROBS" value: "PROBS" } } ] }
"""

from .plan import Plan, Step, plan_of
from .scheduler import EnsembleScheduler, ensemble_scheduler

__all__ = ["EnsembleScheduler", "Plan", "Step", "ensemble_scheduler", "plan_of"]
