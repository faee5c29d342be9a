"""Class names from label files and Triton model directories, and where a report uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.drift.cli import build_parser, class_names_from, main
from sidecar.drift.errors import DriftError
from sidecar.drift.report_classes import (
    MAX_FILE_BYTES,
    NAME_CHARS,
    ClassNames,
    model_dir_names,
    parse_labels,
    read_label_file,
    split_option,
)

CONFIG = """name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" },
  { name: "embedding" data_type: TYPE_FP32 dims: [ 16 ] }
]
some_field_of_a_newer_triton: 1
"""


def test_a_label_file_names_classes_by_line() -> None:
    assert parse_labels("cat\r\ndog\n\n  bird  \n") == ("cat", "dog", "", "bird")
    assert parse_labels("x" * 1000)[0] == "x" * NAME_CHARS
    names = ClassNames({"OUTPUT__0": ("cat", "dog", "")}, default=("a", "b"))
    assert names.column("OUTPUT__0[1]", "numeric") == "dog"
    assert names.column("OUTPUT__0[2]", "numeric") is None  # an empty line names nothing
    assert names.column("OUTPUT__0[7]", "numeric") is None  # beyond the file
    assert names.column("OUTPUT__0[1]", "categorical") is None  # its labels are classes, not its name
    assert names.label("OUTPUT__0.top1", "0") == "cat" and names.label("OUTPUT__0.top1", "-1") is None
    assert names.label("other", "1") == "b" and names.column("other[0]", "numeric") == "a"  # the default
    assert names.column("input:x[0]", "numeric") is None  # inputs are never class scores
    assert names.label("OUTPUT__0[0]", "1") == "dog"  # an integer class tensor of several elements
    assert not ClassNames() and names


def test_option_and_model_directory(tmp_path: Path) -> None:
    assert split_option("labels.txt") == (None, Path("labels.txt"))
    assert split_option("OUTPUT__0=model/labels.txt") == ("OUTPUT__0", Path("model/labels.txt"))
    odd = tmp_path / "a=b.txt"
    odd.write_text("x\n")
    assert split_option(str(odd)) == (None, odd)  # an existing file whose name holds "=" is taken whole
    model = tmp_path / "classifier"
    model.mkdir()
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "labels.txt").write_text("cat\ndog\nbird\n")
    assert model_dir_names(model) == {"OUTPUT__0": ("cat", "dog", "bird")}
    assert model_dir_names(model / "config.pbtxt") == {"OUTPUT__0": ("cat", "dog", "bird")}
    (tmp_path / "other.txt").write_text("one\ntwo\n")
    args = build_parser().parse_args(["compare", "--records", "r", "--shadow", "v2", "--model-dir", str(model),
                                      "--class-names", f"OUTPUT__0={tmp_path / 'other.txt'}",
                                      "--class-names", str(tmp_path / "other.txt")])
    names = class_names_from(args)  # --class-names wins over the model directory, per output
    assert names.by_output == {"OUTPUT__0": ("one", "two")} and names.default == ("one", "two")


@pytest.mark.parametrize("label", ["../../etc/passwd", "/etc/passwd", "sub/labels.txt", ".."])
def test_a_label_filename_with_a_path_is_refused(tmp_path: Path, label: str) -> None:
    (tmp_path / "config.pbtxt").write_text(CONFIG.replace('"labels.txt"', f'"{label}"'))
    with pytest.raises(DriftError, match="must be a file name in the model directory"):
        model_dir_names(tmp_path)


def test_bad_files_are_one_line_errors(tmp_path: Path, records: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DriftError, match="cannot read label file"):
        read_label_file(tmp_path / "missing.txt")
    big = tmp_path / "big.txt"
    big.write_bytes(b"x\n" * (MAX_FILE_BYTES // 2 + 1))
    with pytest.raises(DriftError, match="is over 8 MiB"):
        read_label_file(big)
    (tmp_path / "config.pbtxt").write_text("output [ { name: ")
    with pytest.raises(DriftError, match="is not a Triton model configuration"):
        model_dir_names(tmp_path)
    code = main(["compare", "--records", str(records["reference"]), "--shadow", "v2",
                 "--class-names", str(tmp_path / "missing.txt")])
    assert code == 2 and "cannot read label file" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.text(max_size=40), st.integers(-3, 40))
def test_any_label_text_and_column_name_is_handled(text: str, column: str, index: int) -> None:
    names = parse_labels(text)
    assert len(names) == text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    assert all(len(n) <= NAME_CHARS and "\n" not in n and n == n.strip() for n in names)
    lookup = ClassNames({"out": names}, default=names)
    for name in (lookup.column(f"{column}[{index}]", "numeric"), lookup.label(column, str(index)),
                 lookup.label(f"{column}.top1", column)):
        assert name is None or name in names
    output, path = split_option(column)
    assert output is None or "=" not in output
    assert isinstance(path, Path)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=200), st.builds(lambda label: CONFIG.replace('"labels.txt"', label),
                                                   st.text(max_size=30))))
def test_any_model_configuration_is_read_or_refused_in_one_line(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "config.pbtxt").write_text(text, encoding="utf-8", errors="surrogatepass")
        (root / "labels.txt").write_text("cat\ndog\n")
        try:
            names = model_dir_names(root)
        except DriftError as error:
            assert "\n" not in str(error)  # one line
        else:
            assert all(isinstance(v, tuple) for v in names.values())
