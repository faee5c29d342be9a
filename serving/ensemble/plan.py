"""An ensemble's ``ensemble_scheduling``, checked and turned into a graph of steps.

Two checks, as Triton makes them. `plan_of` needs only the config: steps name models,
every tensor a step reads is an ensemble input or another step's output, each tensor has
one producer, no step waits on itself through others (a cycle), and every ensemble output
is produced. `Plan.check_models` then compares each step with its model's config once
the step models are loaded: the names in its maps are that model's inputs and outputs, it
gives every input the model needs, the datatypes and shapes meet, and each step model
takes the ensemble's batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from inference_protocol.names import name_problem

from ..config import ModelSpec, TensorSpec
from ..errors import ConfigError
from ..requests import full_dims

__all__ = ["MAX_STEPS", "MAX_MAP_ENTRIES", "Plan", "Step", "plan_of"]

MAX_STEPS = 256  # steps of one ensemble; each one is a request per ensemble request
MAX_MAP_ENTRIES = 1024  # entries of one step's input_map or output_map
MAX_TENSOR_NAME = 256


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: a model, and which ensemble tensors its inputs read and its outputs write."""

    index: int  # position in ensemble_scheduling (0-based)
    model: str
    version: str | None  # None: the newest ready version (model_version -1)
    inputs: dict[str, str]  # the step model's input name -> ensemble tensor
    outputs: dict[str, str]  # the step model's output name -> ensemble tensor

    @property
    def label(self) -> str:
        return f"step {self.index + 1} (model '{self.model}')"


@dataclasses.dataclass(frozen=True)
class Plan:
    """The checked graph: steps, and which step produces each tensor."""

    name: str
    steps: tuple[Step, ...]
    inputs: frozenset[str]  # the ensemble's inputs
    producers: dict[str, int]  # ensemble tensor -> index of the step whose output it is
    consumers: dict[str, tuple[int, ...]]  # ensemble tensor -> indexes of the steps that read it
    max_inflight: int = 0  # max_inflight_requests: requests at once in each step, all requests together; 0: no limit

    @property
    def models(self) -> list[str]:
        """The step models, each once, in step order."""
        return list(dict.fromkeys(step.model for step in self.steps))

    def check_models(self, spec: ModelSpec, lookup: Callable[[Step], ModelSpec]) -> None:
        """Check every step against its model's config (``lookup`` gives it); `ConfigError` names the step."""
        ensemble_tensors = {t.name: (t, spec) for t in (*spec.inputs, *spec.outputs)}
        # the datatype and full shape each tensor is known to have, and who says so
        known: dict[str, tuple[str, list[int], str]] = {
            name: (t.datatype, full_dims(owner, t), f"ensemble {'input' if name in self.inputs else 'output'}")
            for name, (t, owner) in ensemble_tensors.items()}
        for step in self.steps:
            model = lookup(step)
            if spec.max_batch_size > model.max_batch_size:
                raise ConfigError(f"ensemble '{self.name}' allows batches of {spec.max_batch_size}, but its "
                                  f"{step.label} takes at most {model.max_batch_size} (max_batch_size); lower the "
                                  "ensemble's max_batch_size or raise the model's")
            self._check_step(step, model, known)

    def _check_step(self, step: Step, model: ModelSpec, known: dict[str, tuple[str, list[int], str]]) -> None:
        model_inputs = {t.name: t for t in model.inputs}
        model_outputs = {t.name: t for t in model.outputs}
        for key in step.inputs:
            if key not in model_inputs:
                raise ConfigError(f"ensemble '{self.name}' {step.label}: input_map names input '{key}', which the "
                                  f"model does not have; its inputs are {', '.join(sorted(model_inputs))}")
        missing = [t.name for t in model.inputs if t.name not in step.inputs and not t.optional]
        if missing:
            raise ConfigError(f"ensemble '{self.name}' {step.label}: input_map gives no tensor for the model's "
                              f"input(s) {', '.join(missing)}")
        for key in step.outputs:
            if key not in model_outputs:
                raise ConfigError(f"ensemble '{self.name}' {step.label}: output_map names output '{key}', which the "
                                  f"model does not have; its outputs are {', '.join(sorted(model_outputs))}")
        for key, tensor in step.inputs.items():
            self._meet(step, tensor, model_inputs[key], model, known)
        for key, tensor in step.outputs.items():
            self._meet(step, tensor, model_outputs[key], model, known)

    def _meet(self, step: Step, tensor: str, own: TensorSpec, model: ModelSpec,
              known: dict[str, tuple[str, list[int], str]]) -> None:
        dims = full_dims(model, own)
        seen = known.get(tensor)
        here = f"{step.label} '{own.name}'"
        if seen is None:
            known[tensor] = (own.datatype, dims, here)
            return
        datatype, other, where = seen
        if datatype != own.datatype:
            raise ConfigError(f"ensemble '{self.name}': tensor '{tensor}' is {datatype} as {where} but "
                              f"{own.datatype} as {here}; the types must be the same")
        if not _dims_meet(other, dims):
            raise ConfigError(f"ensemble '{self.name}': tensor '{tensor}' has shape {other} as {where} but {dims} "
                              f"as {here}; the shapes must agree (-1 matches any size)")


def _dims_meet(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _map(entries: Mapping[str, str], what: str, label: str) -> dict[str, str]:
    mapping = dict(entries)
    if len(mapping) > MAX_MAP_ENTRIES:
        raise ConfigError(f"{label}: {what} has {len(mapping)} entries; at most {MAX_MAP_ENTRIES}")
    if not mapping:
        raise ConfigError(f"{label}: {what} is empty; map the model's tensors to ensemble tensors")
    for key, value in mapping.items():
        for name in (key, value):
            if not name or len(name) > MAX_TENSOR_NAME:
                raise ConfigError(f"{label}: {what} holds a tensor name that is empty or longer than "
                                  f"{MAX_TENSOR_NAME} characters")
    return mapping


def _steps(spec: ModelSpec) -> list[Step]:
    scheduling = spec.proto.ensemble_scheduling
    if not spec.proto.HasField("ensemble_scheduling") or not scheduling.step:
        raise ConfigError(f"ensemble '{spec.name}' has no ensemble_scheduling steps; give at least one step")
    if len(scheduling.step) > MAX_STEPS:
        raise ConfigError(f"ensemble '{spec.name}' has {len(scheduling.step)} steps; at most {MAX_STEPS}")
    steps = []
    for index, item in enumerate(scheduling.step):
        label = f"ensemble '{spec.name}' step {index + 1}"
        problem = name_problem(item.model_name)
        if problem:
            raise ConfigError(f"{label}: model_name is not a model name ({problem})")
        if item.model_version < -1 or item.model_version == 0:
            raise ConfigError(f"{label}: model_version {item.model_version} must be -1 (the newest ready version) "
                              "or a version number")
        label = f"ensemble '{spec.name}' step {index + 1} (model '{item.model_name}')"
        version = None if item.model_version == -1 else str(item.model_version)
        steps.append(Step(index, item.model_name, version, _map(item.input_map, "input_map", label),
                          _map(item.output_map, "output_map", label)))
    return steps


def plan_of(spec: ModelSpec) -> Plan:
    """Check an ensemble's config alone and return its graph; `ConfigError` says what is wrong."""
    steps = _steps(spec)
    inputs = frozenset(t.name for t in spec.inputs)
    producers: dict[str, int] = {}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ConfigError(f"ensemble '{spec.name}' {step.label} writes tensor '{tensor}', which is an "
                                  "ensemble input; give the step's output another name")
            if tensor in producers:
                first = steps[producers[tensor]]
                raise ConfigError(f"ensemble '{spec.name}': tensor '{tensor}' is written by {first.label} and by "
                                  f"{step.label}; every tensor needs exactly one producer")
            producers[tensor] = step.index
    consumers: dict[str, list[int]] = {}
    for step in steps:
        for tensor in step.inputs.values():
            if tensor not in inputs and tensor not in producers:
                raise ConfigError(f"ensemble '{spec.name}' {step.label} reads tensor '{tensor}', which is neither "
                                  "an ensemble input nor any step's output")
            consumers.setdefault(tensor, [])
            if step.index not in consumers[tensor]:
                consumers[tensor].append(step.index)
    for output in spec.outputs:
        if output.name not in producers:
            raise ConfigError(f"ensemble '{spec.name}': output '{output.name}' is produced by no step; map a step's "
                              "output to it in output_map")
    plan = Plan(spec.name, tuple(steps), inputs, producers, {k: tuple(v) for k, v in consumers.items()},
                spec.proto.ensemble_scheduling.max_inflight_requests)
    cycle = _cycle(plan)
    if cycle:
        path = " -> ".join(steps[i].label for i in (*cycle, cycle[0]))
        raise ConfigError(f"ensemble '{spec.name}' has a cycle: {path}; a step cannot wait for its own output")
    return plan


def _cycle(plan: Plan) -> list[int]:
    """A cycle of steps (each reads what the previous one writes), or [] when there is none."""
    after = {step.index: sorted({plan.producers[t] for t in step.inputs.values() if t in plan.producers})
             for step in plan.steps}  # a step's dependencies: the producers of what it reads
    state = dict.fromkeys(after, 0)  # 0 unvisited, 1 on the path, 2 done
    for root in after:
        if state[root]:
            continue
        path, stack = [root], [iter(after[root])]
        state[root] = 1
        while stack:  # iterative depth-first search: a long chain cannot exhaust the recursion limit
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[following] == 1:
                return list(reversed(path[path.index(following):]))
            elif state[following] == 0:
                state[following] = 1
                path.append(following)
                stack.append(iter(after[following]))
    return []
