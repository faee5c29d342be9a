"""The layout rules of DESIGN.md, checked on the source: module sizes, the README's list, imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("inference_protocol", "model_registry", "serving", "sidecar", "triton_python_backend_utils")
MAX_LINES = 400
# What the sidecar may take from serving: pure modules, no torch, no server (see each one's docstring).
SIDECAR_MAY_IMPORT = {"serving.connections", "serving.flags", "serving.logs", "serving.shutdown", "serving.tracing",
                      "serving.tracing_env"}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The absolute names of every module ``path`` imports, relative imports resolved."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return found


def _layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_no_module_is_over_the_limit() -> None:
    # the peers' virtualenvs (benchmarks/.peers, made by --peers runs; git-ignored) are not ours
    scripts = [p for folder in ("benchmarks", "demo", "tests") for p in (ROOT / folder).rglob("*.py")
               if not {".peers", ".venv"} & set(p.relative_to(ROOT).parts)]
    long = {str(p.relative_to(ROOT)): n for p in [*_modules(), *scripts]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def _listed() -> set[str]:
    """The modules the layout section lists: ``pkg/`` paragraphs, ``- `sub/``` headings (and ``  - `sub/```
    within them), ``- `x.py``` items, indented once per level of subpackage."""
    listed: set[str] = set()
    package = ""
    nested: list[str] = []  # the subpackages the current line is inside
    for line in _layout_section().splitlines():
        if match := re.match(r"`(\w+)/`:", line):
            package, nested = match.group(1), []
        elif match := re.match(r"( *)- `(\w+)(/|\.py)`:", line):
            depth = len(match.group(1)) // 2
            assert depth <= len(nested), f"indented deeper than its subpackage: {line!r}"
            nested = nested[:depth]
            if match.group(3) == "/":
                nested.append(match.group(2))
                listed.add("/".join([package, *nested, "__init__.py"]))
            else:
                listed.add("/".join([package, *nested, match.group(2) + ".py"]))
    return listed


def _present() -> set[str]:
    """Every module, but the packages' own ``__init__.py`` (their paragraph introduces them)."""
    return {str(p.relative_to(ROOT)) for p in _modules() if p.parent != ROOT / p.relative_to(ROOT).parts[0]
            or p.name != "__init__.py"}


def test_the_readme_lists_every_module() -> None:
    missing = sorted(_present() - _listed())
    assert not missing, f"README.md's layout section does not list: {missing}"


def test_the_readme_lists_no_module_that_is_gone() -> None:
    gone = sorted(_listed() - _present())
    assert not gone, f"README.md's layout section lists modules that do not exist: {gone}"


def _in(package: str) -> list[Path]:
    return [p for p in _modules() if p.relative_to(ROOT).parts[0] == package]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", _in("inference_protocol"), ids=_name)
def test_the_protocol_package_needs_no_server_and_no_torch(path: Path) -> None:
    heavy = {name for name in _imports(path) if name.split(".")[0] in {"torch", "aiohttp", "grpc", "serving",
                                                                       "sidecar"}}
    assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}: the protocol package stays pure"


@pytest.mark.parametrize("path", _in("model_registry"), ids=_name)
def test_the_registry_package_needs_no_torch_and_no_server(path: Path) -> None:
    heavy = {name for name in _imports(path) if name.split(".")[0] in {"torch", "aiohttp", "grpc", "serving",
                                                                       "sidecar"}}
    assert not heavy, f"{path.relative_to(ROOT)} imports {heavy}: serve and the sidecar both use the registry"


@pytest.mark.parametrize("path", [p for p in _in("model_registry") if p.name != "store.py"], ids=_name)
def test_only_the_store_imports_mlflow(path: Path) -> None:
    assert not any(name.split(".")[0] == "mlflow" for name in _imports(path)), \
        f"{path.relative_to(ROOT)} imports mlflow: only model_registry/store.py does, lazily"


@pytest.mark.parametrize("path", _in("sidecar"), ids=_name)
def test_the_sidecar_takes_only_pure_modules_from_serving(path: Path) -> None:
    taken = {name for name in _imports(path) if name.split(".")[0] == "serving" and name != "serving"}
    # a name is allowed when it is one of those modules or a name inside one (`from serving.logs import x`)
    refused = {name for name in taken if name not in SIDECAR_MAY_IMPORT
               and name.rsplit(".", 1)[0] not in SIDECAR_MAY_IMPORT}
    assert not refused, f"{path.relative_to(ROOT)} imports {refused} from serving: only {SIDECAR_MAY_IMPORT}"


@pytest.mark.parametrize("package", ["drift", "injector"])
def test_offline_parts_import_nothing_of_the_proxy(package: str) -> None:
    for path in (ROOT / "sidecar" / package).rglob("*.py"):
        near = {name for name in _imports(path) if re.match(r"sidecar\.(proxy|upstream|mirror|canary)\b", name)}
        assert not near, f"{path.relative_to(ROOT)} imports {near}"


def test_transports_never_import_each_other() -> None:
    pairs = [("serving/http.py", "serving.grpc"), ("serving/grpc.py", "serving.http"),
             ("sidecar/proxy/http.py", "sidecar.proxy.grpc"), ("sidecar/proxy/grpc.py", "sidecar.proxy.http")]
    for path, other in pairs:
        assert other not in _imports(ROOT / path), f"{path} imports {other}"
