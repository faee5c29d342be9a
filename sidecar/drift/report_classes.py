"""Class names for outputs that are class scores, as Triton keeps them: a label file with one
name per line, line *i* naming class *i* (``label_filename`` of an output in ``config.pbtxt``).

The HTML report shows ``probs[3]`` as the name of class 3 and the classes of ``probs.top1``
(and of integer class outputs) by name. Example::

    from pathlib import Path
    from sidecar.drift.report_classes import ClassNames, read_label_file

    names = ClassNames(default=read_label_file(Path("model/labels.txt")))
    names.column("probs[3]", "numeric")  # "cat"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.drift.columns import INPUT_PREFIX
from sidecar.drift.errors import DriftError

MAX_FILE_BYTES = 8 << 20  # a label file (ImageNet-21k's is 0.3 MiB) or a config.pbtxt read at most
MAX_NAMES = 100_000
NAME_CHARS = 200  # a name longer than this is cut: a report is read, not searched
CONFIG = "config.pbtxt"
_ELEMENT = re.compile(r"^(?P<output>.+)\[(?P<index>[0-9]{1,9})\]$")
_INDEX = re.compile(r"[0-9]{1,9}")


def _shown(path: Path) -> str:
    """A path for a one-line message: quoted when it holds a newline or another control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _read(path: Path, what: str) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise DriftError(f"cannot read {what} {_shown(path)}: {error.strerror or error}") from error
    if len(data) > MAX_FILE_BYTES:
        raise DriftError(f"{what} {_shown(path)} is over {MAX_FILE_BYTES >> 20} MiB: "
                         "give a file of one class name per line")
    return data.decode("utf-8", "replace")


def parse_labels(text: str) -> tuple[str, ...]:
    """Names from a label file's text: one per line (split at newlines only, as Triton reads
    it; a final newline ends the last line), index = line number, ends trimmed."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_NAMES:
        raise DriftError(f"a label file names at most {MAX_NAMES:,} classes, not {len(lines):,}")
    return tuple(line.strip()[:NAME_CHARS] for line in lines)


def read_label_file(path: Path) -> tuple[str, ...]:
    """The class names in a Triton label file."""
    return parse_labels(_read(path, "label file"))


def split_option(text: str) -> tuple[str | None, Path]:
    """``OUTPUT=FILE`` or ``FILE``: split at the last ``=`` (output names may hold one), unless
    the whole text names an existing file."""
    output, sep, rest = text.rpartition("=")
    if not sep or not output or not rest or Path(text).is_file():
        return None, Path(text)
    return output, Path(rest)


def model_dir_names(directory: Path) -> dict[str, tuple[str, ...]]:
    """Names per output from a Triton model directory: each output's ``label_filename``, a
    file beside ``config.pbtxt`` (the path may be the directory or the config file itself)."""
    from google.protobuf import text_format  # only when asked for: the report needs no protobuf otherwise
    from tritonclient.grpc import model_config_pb2

    config = directory if directory.is_file() else directory / CONFIG
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(_read(config, "model configuration"), message, allow_unknown_field=True)
    except text_format.ParseError as error:
        detail = " ".join(str(error).split())
        raise DriftError(f"{_shown(config)} is not a Triton model configuration: {detail}") from error
    names: dict[str, tuple[str, ...]] = {}
    for output in message.output:
        label = output.label_filename
        if not label:
            continue
        if Path(label).name != label or label in (".", ".."):
            raise DriftError(f"{_shown(config)}: label_filename {label!r} of output {output.name!r} must be a file "
                             "name in the model directory, without a path")
        names[output.name] = read_label_file(config.parent / label)
    return names


@dataclass(frozen=True)
class ClassNames:
    """Class names per output (``by_output``), or for every output (``default``)."""

    by_output: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default: tuple[str, ...] | None = None

    def __bool__(self) -> bool:
        return bool(self.by_output) or self.default is not None

    def of(self, output: str) -> tuple[str, ...] | None:
        """The names of ``output``'s classes; inputs are never class scores."""
        if output.startswith(INPUT_PREFIX):
            return None
        return self.by_output.get(output, self.default)

    def name(self, output: str, label: str) -> str | None:
        """The name of class ``label`` (an index) of ``output``, or None when unnamed."""
        names = self.of(output)
        if names is None or not _INDEX.fullmatch(label):
            return None
        index = int(label)
        return names[index] if index < len(names) and names[index] else None

    def column(self, column: str, kind: str) -> str | None:
        """The class a numeric element column (``probs[3]``) holds the score of, or None."""
        match = _ELEMENT.match(column)
        if kind != "numeric" or match is None:
            return None
        return self.name(match["output"], match["index"])

    def label(self, column: str, label: str) -> str | None:
        """The name of ``label`` in a class column: ``probs.top1``, or an integer class output."""
        output = column[:-len(".top1")] if column.endswith(".top1") else column
        match = _ELEMENT.match(output)
        return self.name(match["output"] if match else output, label)
