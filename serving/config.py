"""Triton's ``config.pbtxt``: parse it with Triton's own proto, validate it, and type it.

`parse_config` turns the text of a config.pbtxt into a `ModelSpec`: the typed view that
the rest of the runtime uses. The proto itself stays on the spec (``spec.proto``) so the
config endpoint can return it exactly as Triton does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from .errors import ConfigError
from .paths import check_filename, name_problem, read_labels
from .platforms import DEFAULT_FILENAMES, ENSEMBLE, ONNX, PLATFORMS, PYTHON, TORCHSCRIPT, Completer, model_kind

__all__ = ["DEFAULT_FILENAMES", "ENSEMBLE", "ONNX", "PLATFORMS", "PYTHON", "TORCHSCRIPT", "Completer", "ModelSpec",
           "TensorSpec", "model_kind", "parse_config", "parse_config_json", "spec_from_proto"]

MAX_INSTANCES = 64  # the counts of every instance_group together
MAX_WARMUP_COUNT = 1000  # model_warmup batches, every sample's count together
DEFAULT_PREDICTION_BUCKETS = (-10.0, -5.0, -2.0, -1.0, -0.5, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5,
                              0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0)


def v2_datatype(config_type: int) -> str:
    """Triton config data type (``TYPE_FP32``) -> v2 datatype (``FP32``)."""
    name = pb.DataType.Name(config_type)
    if name == "TYPE_STRING":
        return "BYTES"
    if name == "TYPE_INVALID":
        raise ConfigError("data_type is missing or TYPE_INVALID")
    return name[len("TYPE_"):]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 is any size
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    labels: tuple[str, ...] | None = None  # from label_filename: the output holds class scores


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """How the dynamic batcher forms batches and when it refuses work."""

    max_batch_size: int = 0  # 0: the model takes no batch dimension
    dynamic: bool = False  # False: one request per batch (Triton's default scheduler)
    max_queue_delay_us: int = 0
    preferred_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0  # 0: unbounded
    default_timeout_us: int = 0  # 0: none
    allow_timeout_override: bool = False


@dataclasses.dataclass(frozen=True)
class InstanceGroup:
    kind: str  # KIND_AUTO, KIND_GPU or KIND_CPU
    count: int
    gpus: tuple[int, ...] = ()  # KIND_GPU: these GPUs; empty: every visible GPU


PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclasses.dataclass(frozen=True)
class ExecutionOptions:
    """How batches run, from config.pbtxt ``parameters``; every option is off by default."""

    precision: str = "fp32"  # autocast dtype: fp16 or bf16
    torch_compile: str = "off"  # a torch.compile mode, applied to a Python handler's predict
    torch_compile_backend: str = "inductor"
    cuda_graphs: bool = False  # capture one CUDA graph per batch-size bucket (GPU only)
    warmup: bool = True  # run every batch-size bucket once at load when model_warmup is absent


@dataclasses.dataclass(frozen=True)
class WarmupInput:
    datatype: str
    dims: tuple[int, ...]
    source: str  # zero_data, random_data or input_data_file
    data_file: str = ""


@dataclasses.dataclass(frozen=True)
class WarmupSample:
    """One entry of Triton's ``model_warmup``."""

    name: str
    batch_size: int
    inputs: dict[str, WarmupInput]
    count: int = 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchPolicy
    instance_groups: tuple[InstanceGroup, ...]
    parameters: dict[str, str]
    filename: str
    proto: pb.ModelConfig
    execution: ExecutionOptions = ExecutionOptions()
    warmup: tuple[WarmupSample, ...] = ()

    @property
    def max_batch_size(self) -> int:
        return self.batching.max_batch_size

    @functools.cached_property
    def input_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.inputs)

    def batch_buckets(self) -> tuple[int, ...]:
        """Batch sizes worth preparing for: 1, the preferred sizes and max_batch_size."""
        if self.max_batch_size == 0:
            return (1,)
        return tuple(sorted({1, self.max_batch_size, *self.batching.preferred_sizes}))

    def selects_versions(self, available: list[int]) -> list[int]:
        """The versions the version policy asks to load, newest first."""
        policy = self.proto.version_policy
        choice = policy.WhichOneof("policy_choice")
        newest = sorted(available, reverse=True)
        if choice == "all":
            return newest
        if choice == "specific":
            wanted = set(policy.specific.versions)
            return [v for v in newest if v in wanted]
        return newest[: policy.latest.num_versions if choice == "latest" else 1]

    def to_json(self) -> dict[str, Any]:
        """The config as Triton's ``/config`` endpoint returns it (integers as numbers)."""
        return config_to_json(self.proto)

    def class_outputs(self) -> set[str]:
        named = {n.strip() for n in self.parameters.get("class_scores", "").split(",") if n.strip()}
        return named | {o.name for o in self.outputs if o.labels}

    def prediction_buckets(self, output: str) -> tuple[float, ...]:
        raw = self.parameters.get(f"prediction_buckets:{output}") or self.parameters.get("prediction_buckets")
        return _parse_buckets(raw) if raw else DEFAULT_PREDICTION_BUCKETS


def _parse_buckets(raw: str) -> tuple[float, ...]:
    try:
        edges = tuple(sorted({float(x) for x in raw.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"prediction_buckets {raw!r} must be comma-separated numbers") from None
    if not edges:
        raise ConfigError("prediction_buckets is empty; give comma-separated bucket edges")
    return edges


def config_to_json(message: Any) -> dict[str, Any]:
    try:
        obj = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26, whose keyword the current stubs no longer have
        obj = json_format.MessageToDict(  # type: ignore[call-arg]  # that older keyword
            message, preserving_proto_field_name=True, including_default_value_fields=True)
    _int64_as_numbers(message.DESCRIPTOR, obj)
    return obj


_INT64_TYPES = {3, 4, 6, 16, 18}  # INT64, UINT64, FIXED64, SFIXED64, SINT64


def _is_repeated(field: Any) -> bool:
    return field.is_repeated if hasattr(type(field), "is_repeated") else field.label == 3


def _int64_as_numbers(descriptor: Any, obj: dict[str, Any]) -> None:
    """json_format writes int64 as strings (JSON's precision); Triton writes numbers."""
    for field in descriptor.fields:
        if field.name not in obj:
            continue
        value = obj[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    _int64_as_numbers(value_field.message_type, item)
                elif value_field.type in _INT64_TYPES:
                    value[key] = int(item)
        elif field.message_type is not None:
            for item in value if _is_repeated(field) else [value]:
                _int64_as_numbers(field.message_type, item)
        elif field.type in _INT64_TYPES:
            obj[field.name] = [int(v) for v in value] if _is_repeated(field) else int(value)


def _tensor(model_dir: Path, item: Any, kind: str) -> TensorSpec:
    if not item.name:
        raise ConfigError(f"an {kind} has no name")
    try:
        datatype = v2_datatype(item.data_type)
    except ConfigError as exc:
        raise ConfigError(f"{kind} '{item.name}': {exc}") from None
    dims = tuple(int(d) for d in item.dims)
    if any(d < -1 or d == 0 for d in dims):
        raise ConfigError(f"{kind} '{item.name}': dims {list(dims)} may hold only positive sizes or -1")
    reshape = tuple(int(d) for d in item.reshape.shape) if item.HasField("reshape") else None
    if reshape is not None and -1 not in dims and -1 not in reshape and math.prod(dims) != math.prod(reshape):
        raise ConfigError(f"{kind} '{item.name}': reshape {list(reshape)} does not hold the "
                          f"{math.prod(dims)} elements of dims {list(dims)}")
    labels = None
    if kind == "output" and item.label_filename:
        labels = read_labels(model_dir, item.label_filename, f"output '{item.name}': label_filename")
    return TensorSpec(item.name, datatype, dims, reshape, bool(getattr(item, "optional", False)), labels)


def _choice(parameters: dict[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = parameters.get(key, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"parameter {key} is {value!r}; use one of {', '.join(choices)}")
    return value


def _execution_options(parameters: dict[str, str]) -> ExecutionOptions:
    booleans = {"true": True, "false": False}
    return ExecutionOptions(
        precision=_choice(parameters, "precision", PRECISIONS, "fp32"),
        torch_compile=_choice(parameters, "torch_compile", COMPILE_MODES, "off"),
        torch_compile_backend=parameters.get("torch_compile_backend", "inductor").strip(),
        cuda_graphs=booleans[_choice(parameters, "cuda_graphs", ("true", "false"), "false")],
        warmup=booleans[_choice(parameters, "warmup", ("true", "false"), "true")],
    )


def _warmup(config: pb.ModelConfig, inputs: tuple[TensorSpec, ...]) -> tuple[WarmupSample, ...]:
    names = {t.name for t in inputs}
    if sum(max(w.count, 1) for w in config.model_warmup) > MAX_WARMUP_COUNT:
        raise ConfigError(f"model_warmup runs more than {MAX_WARMUP_COUNT} batches in all (the counts together)")
    samples = []
    for warmup in config.model_warmup:
        label = f"model_warmup '{warmup.name}'"
        if config.max_batch_size and not 1 <= warmup.batch_size <= config.max_batch_size:
            raise ConfigError(f"{label}: batch_size {warmup.batch_size} must be within 1..{config.max_batch_size}")
        unknown = set(warmup.inputs) - names
        if unknown:
            raise ConfigError(f"{label} names inputs {sorted(unknown)} the config does not declare")
        sample_inputs = {}
        for input_name, item in warmup.inputs.items():
            where = f"{label}, input '{input_name}'"
            source = item.WhichOneof("input_data_type")
            if source is None:
                raise ConfigError(f"{where}: give zero_data, random_data or input_data_file")
            dims = tuple(int(d) for d in item.dims)
            if any(d < 1 for d in dims):
                raise ConfigError(f"{where}: dims {list(dims)} must all be positive (warm-up data has fixed shapes)")
            if source == "input_data_file":
                check_filename(item.input_data_file, f"{where}: input_data_file")
            try:
                datatype = v2_datatype(item.data_type)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            sample_inputs[input_name] = WarmupInput(datatype, dims, source, item.input_data_file)
        samples.append(WarmupSample(warmup.name, max(warmup.batch_size, 1), sample_inputs, max(warmup.count, 1)))
    return tuple(samples)


def _batch_policy(config: pb.ModelConfig) -> BatchPolicy:
    if config.max_batch_size < 0:
        raise ConfigError("max_batch_size must be 0 (no batching) or positive")
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(max_batch_size=config.max_batch_size)
    db = config.dynamic_batching
    preferred = tuple(sorted(set(db.preferred_batch_size)))
    if config.max_batch_size == 0 and (preferred or db.max_queue_delay_microseconds):
        raise ConfigError("dynamic_batching needs max_batch_size > 0: the model must accept a batch dimension")
    bad = [p for p in preferred if p <= 0 or p > config.max_batch_size]
    if bad:
        raise ConfigError(f"preferred_batch_size {bad} must be within 1..max_batch_size ({config.max_batch_size})")
    queue = db.default_queue_policy
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=config.max_batch_size > 0,
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preferred_sizes=preferred,
        max_queue_size=queue.max_queue_size,
        default_timeout_us=queue.default_timeout_microseconds,
        allow_timeout_override=queue.allow_timeout_override,
    )


def parse_config(text: str, model_dir: Path, complete: Completer | None = None) -> ModelSpec:
    """Parse and validate one model's config.pbtxt; fills Triton's defaults into the proto."""
    try:
        config = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"config.pbtxt is not a valid ModelConfig: {exc}") from None
    except (ValueError, RecursionError):  # text_format raises these for some malformed values and nesting
        raise ConfigError("config.pbtxt is not a valid ModelConfig: a value cannot be read") from None
    return spec_from_proto(config, model_dir, complete)


def parse_config_json(text: str, model_dir: Path, complete: Completer | None = None) -> ModelSpec:
    """A config given as JSON (the ``config`` override of a load request), as Triton accepts it."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"the config override is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError("the config override must be a JSON object: a ModelConfig as GET .../config returns it")
    try:
        config = json_format.ParseDict(obj, pb.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"the config override is not a valid ModelConfig in JSON: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError):
        # json_format raises these for values of the wrong shape (a list for a message, ...)
        raise ConfigError("the config override is not a valid ModelConfig in JSON: a field holds a value of "
                          "the wrong type; compare with GET /v2/models/<model>/config") from None
    return spec_from_proto(config, model_dir, complete)


def spec_from_proto(config: pb.ModelConfig, model_dir: Path, complete: Completer | None = None) -> ModelSpec:
    """Validate a ModelConfig and type it; fills Triton's defaults (and, with ``complete``, what the
    model itself declares) into the proto."""
    name = model_dir.name
    if config.name and config.name != name:
        named = repr(config.name) if name_problem(config.name) is None else "a name that is not a model name"
        raise ConfigError(f"the config names the model {named} but its directory is '{name}'; they must match")
    config.name = name
    platform = model_kind(config, model_dir)
    # Triton asks a Python model's auto_complete_config always: it may set batching and the
    # transaction policy too, not only tensors the config lacks
    if complete is not None and (not config.input or not config.output or platform == PYTHON):
        complete(platform, config, model_dir)
    # a Python model may declare none (Triton serves it so; requests are then refused by name)
    if (not config.input or not config.output) and platform != PYTHON:
        raise ConfigError("config.pbtxt must declare at least one input and one output"
                          + ("" if complete is None else " (the model file does not say which)"))
    inputs = tuple(_tensor(model_dir, item, "input") for item in config.input)
    outputs = tuple(_tensor(model_dir, item, "output") for item in config.output)
    for kind, specs in (("input", inputs), ("output", outputs)):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{kind} names must be unique, got {names}")
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    elif (config.version_policy.WhichOneof("policy_choice") == "latest"
          and config.version_policy.latest.num_versions < 1):
        raise ConfigError("version_policy latest needs num_versions >= 1")
    if not config.default_model_filename and DEFAULT_FILENAMES[platform]:
        config.default_model_filename = DEFAULT_FILENAMES[platform]
    if config.default_model_filename:
        check_filename(config.default_model_filename, "default_model_filename")
    for key, filename in config.cc_model_filenames.items():
        check_filename(filename, f"cc_model_filenames[{key!r}]")
    counts = [max(g.count, 1) for g in config.instance_group]
    if sum(counts) > MAX_INSTANCES:  # each instance is a handler with a thread of its own
        raise ConfigError(f"instance_group count adds up to {sum(counts)}; at most {MAX_INSTANCES} "
                          "(per GPU, for KIND_GPU groups)")
    groups = tuple(InstanceGroup(pb.ModelInstanceGroup.Kind.Name(g.kind), max(g.count, 1), tuple(g.gpus))
                   for g in config.instance_group) or (InstanceGroup("KIND_AUTO", 1),)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    spec = ModelSpec(
        name=name, platform=platform, inputs=inputs, outputs=outputs, batching=_batch_policy(config),
        instance_groups=groups, parameters=parameters, filename=config.default_model_filename, proto=config,
        execution=_execution_options(parameters), warmup=_warmup(config, inputs))
    output_names = {o.name for o in outputs}
    unknown = spec.class_outputs() - output_names
    if unknown:
        raise ConfigError(f"parameter class_scores names outputs {sorted(unknown)} that the config does not declare")
    for output in output_names:
        spec.prediction_buckets(output)  # fail at load, not at the first scrape
    return spec
