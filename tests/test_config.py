"""config.pbtxt: Triton's proto, validation with clear messages, the JSON form."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.config import PLATFORMS, TORCHSCRIPT, InstanceGroup, ModelSpec, model_kind, parse_config
from serving.errors import ConfigError

BASE = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


def parse(text: str, name: str = "m", tmp: Path | None = None) -> ModelSpec:
    return parse_config(text, (tmp or Path("/nonexistent")) / name)


def test_fields_are_typed_and_defaults_filled() -> None:
    spec = parse(BASE + """
    dynamic_batching {
      max_queue_delay_microseconds: 100
      preferred_batch_size: [ 4, 2 ]
      default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 500 allow_timeout_override: true }
    }
    instance_group [ { count: 2 kind: KIND_CPU } ]
    parameters { key: "k" value { string_value: "v" } }
    """)
    assert spec.name == "m" and spec.platform == TORCHSCRIPT and spec.max_batch_size == 8
    assert spec.inputs[0].datatype == "FP32" and spec.inputs[0].dims == (-1, 3)
    assert spec.outputs[0].datatype == "BYTES"
    b = spec.batching
    assert (b.dynamic, b.max_queue_delay_us, b.preferred_sizes, b.max_queue_size, b.default_timeout_us,
            b.allow_timeout_override) == (True, 100, (2, 4), 10, 500, True)
    assert spec.instance_groups == (InstanceGroup("KIND_CPU", 2),)
    assert spec.parameters == {"k": "v"}
    assert spec.filename == "model.pt"
    assert spec.proto.version_policy.latest.num_versions == 1


def test_json_form_is_tritons_with_integers_as_numbers() -> None:
    config = parse(BASE + "dynamic_batching { max_queue_delay_microseconds: 100 }").to_json()
    assert config["name"] == "m" and config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [-1, 3] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"


@pytest.mark.parametrize("policy, available, expected", [
    ("", [1, 3, 2], [3]),
    ("version_policy { latest { num_versions: 2 } }", [1, 3, 2], [3, 2]),
    ("version_policy { all { } }", [1, 3, 2], [3, 2, 1]),
    ("version_policy { specific { versions: [ 1, 7 ] } }", [1, 3, 2], [1]),
])
def test_version_policy(policy: str, available: list[int], expected: list[int]) -> None:
    assert parse(BASE + policy).selects_versions(available) == expected


@pytest.mark.parametrize("text, message", [
    ("this is not pbtxt", "not a valid ModelConfig"),
    ('name: "other"' + BASE, "directory is 'm'"),
    (BASE.replace('platform: "pytorch_libtorch"', 'platform: "tensorrt_plan"'), "unsupported platform"),
    (BASE.replace('platform: "pytorch_libtorch"', 'platform: "onnxruntime_onnx" backend: "pytorch"'),
     "unsupported platform"),
    (BASE.replace('platform: "pytorch_libtorch"', ''), "names no platform or backend and no model file"),
    (BASE.replace("TYPE_FP32", "TYPE_INVALID"), "TYPE_INVALID"),
    (BASE.replace("-1, 3", "0"), "dims"),
    (BASE.replace("max_batch_size: 8", "max_batch_size: 0") + "dynamic_batching { preferred_batch_size: 4 }",
     "needs max_batch_size > 0"),
    (BASE + "dynamic_batching { preferred_batch_size: 16 }", "within 1..max_batch_size"),
    (BASE + 'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]', "unique"),
    (BASE + 'parameters { key: "class_scores" value { string_value: "NOPE" } }', "does not declare"),
    (BASE + 'parameters { key: "prediction_buckets" value { string_value: "a,b" } }', "comma-separated numbers"),
    ('platform: "pytorch_libtorch"', "at least one input"),
])
def test_invalid_configs_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_labels_mark_class_outputs_and_buckets_are_configurable(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "labels.txt").write_text("cat\ndog\n")
    spec = parse_config("""
    backend: "python"
    max_batch_size: 4
    input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
    output [ { name: "P" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt" },
             { name: "Q" data_type: TYPE_FP32 dims: [ 2 ] } ]
    parameters { key: "class_scores" value { string_value: "Q" } }
    parameters { key: "prediction_buckets:Q" value { string_value: "1, 0, 2" } }
    """, tmp_path / "m")
    assert spec.outputs[0].labels == ("cat", "dog")
    assert spec.class_outputs() == {"P", "Q"}
    assert spec.prediction_buckets("Q") == (0.0, 1.0, 2.0)
    assert spec.filename == "model.py"
    with pytest.raises(ConfigError, match="label_filename"):
        parse_config(BASE.replace("dims: [ 1 ]", 'dims: [ 1 ] label_filename: "missing.txt"'), tmp_path / "m")


@pytest.mark.parametrize("field, value, message", [
    ("default_model_filename", "/abs/model.pt", "absolute path"),
    ("default_model_filename", "../model.pt", "holds '..'"),
    ("default_model_filename", "a/../../model.pt", "holds '..'"),
    ("default_model_filename", "a\\\\..\\\\model.pt", "backslash"),
    ("default_model_filename", "model\\u0000.pt", "control character"),
    ("label_filename", "/etc/passwd", "absolute path"),
    ("label_filename", "../other/labels.txt", "holds '..'"),
])
def test_file_names_in_a_config_stay_relative(tmp_path: Path, field: str, value: str, message: str) -> None:
    (tmp_path / "m").mkdir()
    if field == "label_filename":
        text = BASE.replace("dims: [ 1 ]", f'dims: [ 1 ] label_filename: "{value}"')
    else:
        text = BASE + f'default_model_filename: "{value}"'
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(text, tmp_path / "m")
    assert "/abs" not in str(info.value) and "/etc" not in str(info.value)  # an absolute value is not echoed


def test_labels_are_read_inside_the_model_directory_only(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.txt").write_text("root\n")
    (tmp_path / "m" / "labels.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "m" / "inside.txt").write_text("cat\n")
    (tmp_path / "m" / "alias.txt").symlink_to("inside.txt")  # a link that stays inside is fine
    def labelled(name: str) -> str:
        return BASE.replace("dims: [ 1 ]", f'dims: [ 1 ] label_filename: "{name}"')

    with pytest.raises(ConfigError, match=r"m/labels\.txt resolves outside") as info:
        parse_config(labelled("labels.txt"), tmp_path / "m")
    assert str(tmp_path) not in str(info.value)
    assert parse_config(labelled("alias.txt"), tmp_path / "m").outputs[0].labels == ("cat",)
    (tmp_path / "m" / "huge.txt").write_bytes(b"x\n" * (3 * 1024 * 1024))
    with pytest.raises(ConfigError, match="larger than"):
        parse_config(labelled("huge.txt"), tmp_path / "m")
    (tmp_path / "m" / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config(labelled("binary.txt"), tmp_path / "m")


@pytest.mark.parametrize("override, message", [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"max_batch_size": {"a": 1}}', "not a valid ModelConfig"),
    ('{"input": [{"dims": "x"}]}', "not a valid ModelConfig"),
    ('{"bogus": 1}', "bogus"),
    ("[" * 2000 + "]" * 2000, "not valid JSON"),
])
def test_a_json_override_that_is_not_a_config_is_a_config_error(override: str, message: str) -> None:
    from serving.config import parse_config_json

    with pytest.raises(ConfigError, match=message):
        parse_config_json(override, Path("/nonexistent/m"))


@pytest.mark.parametrize("names, kind, backend", [
    ('platform: "onnxruntime_onnx"', "onnxruntime_onnx", "onnxruntime"),
    ('backend: "onnxruntime"', "onnxruntime_onnx", "onnxruntime"),
    ('backend: "pytorch"', "pytorch_libtorch", "pytorch"),
    ('platform: "ensemble"', "ensemble", ""),
    ('backend: "python"', "python", "python"),
])
def test_either_name_gives_the_kind_and_both_names(names: str, kind: str, backend: str) -> None:
    config = text_format.Parse(names, model_config_pb2.ModelConfig())
    assert model_kind(config, Path("/nonexistent/m")) == kind
    assert config.backend == backend and config.platform == PLATFORMS[kind][0]


@pytest.mark.parametrize("files, named, kind", [
    (["model.onnx"], "", "onnxruntime_onnx"),
    (["model.pt"], "", "pytorch_libtorch"),
    (["model.py"], "", "python"),
    (["model.py", "model.onnx"], "", "onnxruntime_onnx"),  # Triton's order
    (["net.onnx"], "net.onnx", "onnxruntime_onnx"),
    (["weights.pt"], "weights.pt", "pytorch_libtorch"),
])
def test_a_config_without_names_gets_them_from_the_newest_version(tmp_path: Path, files: list[str], named: str,
                                                                  kind: str) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text("")  # an older version holds another kind
    (tmp_path / "m" / "3").mkdir()
    for file in files:
        (tmp_path / "m" / "3" / file).write_bytes(b"")
    config = model_config_pb2.ModelConfig(default_model_filename=named)
    assert model_kind(config, tmp_path / "m") == kind
    assert (config.platform, config.backend) == PLATFORMS[kind][:2]


def test_a_named_file_outside_the_model_is_refused_before_it_is_looked_for(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="default_model_filename"):
        model_kind(model_config_pb2.ModelConfig(default_model_filename="../../x.onnx"), tmp_path / "m")


def test_a_python_model_may_declare_no_tensors_as_triton_serves_it() -> None:
    spec = parse('backend: "python" max_batch_size: 16')
    assert spec.inputs == () and spec.outputs == () and spec.max_batch_size == 16
