"""An ensemble's config checked on its own and against its step models, and fuzzed.

Whatever the config says, checking it either gives a plan that runs (every step's inputs
arrive, every output is produced, each tensor has one producer) or a `ConfigError` saying
what is wrong; nothing else.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as pb

from serving.config import ModelSpec, parse_config, spec_from_proto
from serving.ensemble import Plan, Step, plan_of
from serving.errors import ConfigError, ServingError

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
NOWHERE = Path("/nonexistent-repository")  # an ensemble's config reads no file

HEADER = """
    name: "ens"
    platform: "ensemble"
    max_batch_size: 8
    input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""


def ensemble(steps: str, header: str = HEADER) -> ModelSpec:
    text = textwrap.dedent(header) + "ensemble_scheduling { step [ " + steps + " ] }"
    return parse_config(text, NOWHERE / "ens")


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: {version} {" ".join(maps)} }}'


def model(name: str, inputs: dict[str, str], outputs: dict[str, str], max_batch_size: int = 8,
          dims: tuple[int, ...] = (4,)) -> ModelSpec:
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for tensors, field in ((inputs, config.input), (outputs, config.output)):
        for tensor, datatype in tensors.items():
            field.add(name=tensor, data_type=pb.DataType.Value(f"TYPE_{datatype}"), dims=list(dims))
    return spec_from_proto(config, NOWHERE / name)


def test_a_chain_becomes_a_plan() -> None:
    plan = plan_of(ensemble(step("b", {"X": "mid"}, {"Y": "OUT"}) + ", " + step("a", {"X": "IN"}, {"Y": "mid"}, 2)))
    assert plan.models == ["b", "a"]
    assert plan.producers == {"mid": 1, "OUT": 0} and plan.consumers == {"mid": (0,), "IN": (1,)}
    assert plan.steps[1].version == "2" and plan.steps[0].version is None
    assert plan.steps[1].label == "step 2 (model 'a')"


@pytest.mark.parametrize("steps, message", [
    ("", "has no ensemble_scheduling steps"),
    (step("a/b", {"X": "IN"}, {"Y": "OUT"}), r"step 1: model_name is not a model name"),
    (step("a", {"X": "IN"}, {"Y": "OUT"}, version=0), "model_version 0 must be -1"),
    (step("a", {"X": "IN"}, {"Y": "OUT"}, version=-3), "model_version -3 must be -1"),
    (step("a", {}, {"Y": "OUT"}), r"step 1 \(model 'a'\): input_map is empty"),
    (step("a", {"X": "IN"}, {}), "output_map is empty"),
    (step("a", {"X": "IN"}, {"Y": "IN"}), "writes tensor 'IN', which is an ensemble input"),
    (step("a", {"X": "IN"}, {"Y": "OUT"}) + "," + step("b", {"X": "IN"}, {"Y": "OUT"}),
     r"tensor 'OUT' is written by step 1 \(model 'a'\) and by step 2 \(model 'b'\)"),
    (step("a", {"X": "IN"}, {"Y": "OUT", "Z": "OUT"}), "every tensor needs exactly one producer"),
    (step("a", {"X": "ghost"}, {"Y": "OUT"}), "reads tensor 'ghost', which is neither an ensemble input"),
    (step("a", {"X": "IN"}, {"Y": "other"}), "output 'OUT' is produced by no step"),
    (step("a", {"X": "IN", "W": "OUT"}, {"Y": "OUT"}), r"has a cycle: step 1 \(model 'a'\) -> step 1"),
    (step("a", {"X": "IN", "W": "t2"}, {"Y": "t1"}) + "," + step("b", {"X": "t1"}, {"Y": "t2"}) + "," +
     step("c", {"X": "t1"}, {"Y": "OUT"}), r"has a cycle: step 2 \(model 'b'\) -> step 1 \(model 'a'\) -> step 2"),
])
def test_what_a_config_alone_gets_wrong(steps: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_of(ensemble(steps))


def test_too_many_steps_are_refused_before_anything_else() -> None:
    many = ", ".join(step("a", {"X": "IN"}, {"Y": f"t{i}"}) for i in range(257))
    with pytest.raises(ConfigError, match="has 257 steps; at most 256"):
        plan_of(ensemble(many))


def test_a_long_chain_is_checked_without_recursion() -> None:
    chain = [step("a", {"X": "IN"}, {"Y": "t0"})]
    chain += [step("a", {"X": f"t{i}"}, {"Y": f"t{i + 1}"}) for i in range(254)]
    chain.append(step("a", {"X": "t254"}, {"Y": "OUT"}))
    assert len(plan_of(ensemble(", ".join(chain))).steps) == 256


CHAIN = step("pre", {"RAW": "IN"}, {"PIXELS": "mid"}) + ", " + step("cls", {"INPUT": "mid"}, {"PROBS": "OUT"})


def lookup_of(*models: ModelSpec) -> Callable[[Step], ModelSpec]:
    by_name = {m.name: m for m in models}
    return lambda s: by_name[s.model]


def test_step_models_that_fit() -> None:
    spec = ensemble(CHAIN)
    plan_of(spec).check_models(spec, lookup_of(model("pre", {"RAW": "FP32"}, {"PIXELS": "FP32"}),
                                               model("cls", {"INPUT": "FP32"}, {"PROBS": "FP32", "LABEL": "INT64"})))


@pytest.mark.parametrize("pre, cls, message", [
    (model("pre", {"DATA": "FP32"}, {"PIXELS": "FP32"}), None, "input_map names input 'RAW', which the model does"),
    (model("pre", {"RAW": "FP32", "MORE": "FP32"}, {"PIXELS": "FP32"}), None,
     r"input_map gives no tensor for the model's input\(s\) MORE"),
    (model("pre", {"RAW": "FP32"}, {"OTHER": "FP32"}), None, "output_map names output 'PIXELS', which the model"),
    (model("pre", {"RAW": "INT32"}, {"PIXELS": "FP32"}), None,
     r"tensor 'IN' is FP32 as ensemble input but INT32 as step 1 \(model 'pre'\) 'RAW'"),
    (None, model("cls", {"INPUT": "FP16"}, {"PROBS": "FP32"}),
     r"tensor 'mid' is FP32 as step 1 \(model 'pre'\) 'PIXELS' but FP16 as step 2 \(model 'cls'\) 'INPUT'"),
    (None, model("cls", {"INPUT": "FP32"}, {"PROBS": "FP32"}, dims=(5,)), r"shape \[-1, 4\] .* but \[-1, 5\]"),
    (None, model("cls", {"INPUT": "FP32"}, {"PROBS": "FP32"}, max_batch_size=4),
     r"allows batches of 8, but its step 2 \(model 'cls'\) takes at most 4"),
])
def test_what_the_step_models_get_wrong(pre: ModelSpec | None, cls: ModelSpec | None, message: str) -> None:
    spec = ensemble(CHAIN)
    pre = pre or model("pre", {"RAW": "FP32"}, {"PIXELS": "FP32"})
    cls = cls or model("cls", {"INPUT": "FP32"}, {"PROBS": "FP32"})
    with pytest.raises(ConfigError, match=message):
        plan_of(spec).check_models(spec, lookup_of(pre, cls))


# -- fuzzing -------------------------------------------------------------------------------

TENSORS = ("IN", "OUT", "t1", "t2", "t3", "")
NAMES = st.sampled_from(("a", "b", "c", "", "x/y", ".", "é", "a" * 300))
maps = st.dictionaries(st.sampled_from(("A", "B", "C", "")), st.sampled_from(TENSORS), max_size=3)
fuzz_steps = st.lists(st.tuples(NAMES, st.integers(-3, 3), maps, maps), max_size=6)


def fuzzed_spec(steps: list[tuple[str, int, dict[str, str], dict[str, str]]]) -> ModelSpec:
    config = pb.ModelConfig(name="ens", platform="ensemble", max_batch_size=8)
    config.input.add(name="IN", data_type=pb.TYPE_FP32, dims=[4])
    config.output.add(name="OUT", data_type=pb.TYPE_FP32, dims=[4])
    config.ensemble_scheduling.SetInParent()
    for name, version, inputs, outputs in steps:
        item = config.ensemble_scheduling.step.add(model_name=name, model_version=version)
        item.input_map.update(inputs)
        item.output_map.update(outputs)
    return spec_from_proto(config, NOWHERE / "ens")


def runs(plan: Plan) -> bool:
    """Whether every step's inputs arrive in some order and every ensemble output is written."""
    resolved, left = set(plan.inputs), list(plan.steps)
    while left:
        ready = [s for s in left if set(s.inputs.values()) <= resolved]
        if not ready:
            return False
        for s in ready:
            left.remove(s)
            resolved |= set(s.outputs.values())
    return "OUT" in resolved


@FUZZ
@given(fuzz_steps)
def test_any_ensemble_scheduling_is_a_plan_that_runs_or_a_config_error(
        steps: list[tuple[str, int, dict[str, str], dict[str, str]]]) -> None:
    spec = fuzzed_spec(steps)
    try:
        plan = plan_of(spec)
    except ConfigError as exc:
        assert str(exc).startswith("ensemble 'ens'") and "\n" not in str(exc)
        return
    assert runs(plan)
    written = [t for s in plan.steps for t in s.outputs.values()]
    assert len(written) == len(set(written)) and "IN" not in written


step_models = st.tuples(st.sampled_from(("FP32", "INT32")), st.sampled_from((0, 4, 8)),
                        st.sampled_from(((4,), (-1,), (5,), (2, 2))), st.booleans())


@FUZZ
@given(fuzz_steps, st.lists(step_models, min_size=6, max_size=6))
def test_step_models_of_any_kind_fit_or_give_a_config_error(
        steps: list[tuple[str, int, dict[str, str], dict[str, str]]],
        kinds: list[tuple[str, int, tuple[int, ...], bool]]) -> None:
    spec = fuzzed_spec(steps)
    try:
        plan = plan_of(spec)
    except ConfigError:
        return

    def lookup(s: Step) -> ModelSpec:
        datatype, batch, dims, extra = kinds[s.index]
        inputs = dict.fromkeys(s.inputs, datatype) | ({"EXTRA": datatype} if extra else {})
        return model(f"m{s.index}", inputs, dict.fromkeys(s.outputs, datatype), batch, dims)

    try:
        plan.check_models(spec, lookup)
    except ServingError as exc:
        assert isinstance(exc, ConfigError) and "\n" not in str(exc)
        return
    for s in plan.steps:  # what fits: every input the model needs is mapped, the batch fits, types meet
        datatype, batch, _, extra = kinds[s.index]
        assert not extra and batch >= 8 and datatype == "FP32"
