"""The registry on MLflow's Model Registry: versions with manifests, aliases, the audit log.

`Registry.open` finds the registry as MLflow users expect (``--registry-uri``, else
``MLFLOW_REGISTRY_URI``, else ``MLFLOW_TRACKING_URI``) and falls back to an embedded one: a
SQLite registry and a local artifact store under ``./registry/``. A team moves to ``mlflow
server`` (a database, S3 or GCS artifacts) by changing the URI only.

This is the only module that imports MLflow, lazily: the rest of the package, serve and the
sidecar import without the ``registry`` extra installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import audit, layout, manifest
from .audit import AuditEntry
from .errors import NotFound, NotInstalled, RegistryError, Unreachable
from .uris import ModelUri, check_alias, check_model_name, parse_model_uri

EMBEDDED = Path("registry")
EXPERIMENT = "shadowserve-registry"
ARTIFACT_PATH = "model"
TAG_MANIFEST = "shadowserve.manifest_sha256"
TAG_VERSION_DIR = "shadowserve.version_directory"
DIGEST = re.compile(r"[0-9a-f]{64}")


def bound_calls(environ: MutableMapping[str, str], timeout_secs: int = 10, retries: int = 2) -> None:
    """MLflow's HTTP timeout and retries for an ``mlflow server``, unless the user set them.

    MLflow reads them from the environment at every call, and waits 120 s a try with 7 retries
    by default: a registry that hangs would hold a command, a poll or a flush for many minutes.
    Entry points call this once (``shadowserve-registry``, ``serve``, the sidecar) with their
    own bound; the user's ``MLFLOW_HTTP_*`` settings win.
    """
    for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", timeout_secs), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1), ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")):
        environ.setdefault(name, str(value))


@dataclass(frozen=True)
class Version:
    """One registered version, as the registry describes it."""

    name: str
    version: int
    manifest_digest: str
    source: str
    run_id: str | None
    tags: Mapping[str, str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def locate(uri: str | None) -> tuple[str, Path | None]:
    """The registry URI to use and, for a local registry, where its artifacts go."""
    chosen = uri or os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        chosen = str(EMBEDDED)
    if chosen.startswith(("http://", "https://", "databricks")):
        return chosen, None
    if chosen.startswith("sqlite:///"):
        db = Path(chosen[len("sqlite:///"):])
        return chosen, db.parent / "artifacts"
    if "://" in chosen or chosen.startswith(("file:", "postgresql", "mysql", "mssql")):
        return chosen, None  # another database, or MLflow's file store: MLflow's own defaults
    root = Path(chosen).resolve()  # a directory: an embedded registry there
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'registry.db'}", root / "artifacts"


class Registry:
    """A handle on one registry; every method is synchronous (call it from a thread in async code)."""

    def __init__(self, uri: str, artifacts: Path | None, client: Any) -> None:
        self.uri, self._artifacts, self._client = uri, artifacts, client
        self._experiment: str | None = None

    @classmethod
    def open(cls, uri: str | None = None, *, announce: Callable[[str], None] | None = None) -> Registry:
        """The registry at ``uri``, MLflow's environment variables, or the embedded default."""
        embedded = not (uri or os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI"))
        resolved, artifacts = locate(uri)
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise NotInstalled("the registry needs MLflow: pip install 'shadowserve[registry]'") from None
        # store.py turns a failing database into one line; MLflow's own logger would add a traceback at each call
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        if embedded and announce is not None:
            announce(f"registry: embedded at ./{EMBEDDED} (set --registry-uri or MLFLOW_TRACKING_URI for a team "
                     "server)")
        with _mlflow_errors(f"open the registry at {resolved}"):
            client = MlflowClient(tracking_uri=resolved, registry_uri=resolved)
        return cls(resolved, artifacts, client)

    # -- reading -------------------------------------------------------------------------------

    def resolve(self, uri: ModelUri | str) -> Version:
        """The version a URI names: an alias is looked up now."""
        target = parse_model_uri(uri) if isinstance(uri, str) else uri
        with _mlflow_errors(f"resolve {target}", target):
            if target.alias is not None:
                found = self._client.get_model_version_by_alias(target.name, target.alias)
            else:
                found = self._client.get_model_version(target.name, str(target.version))
        return _version(found, target)

    def history(self, name: str) -> list[AuditEntry]:
        """The audit log of a registered model, oldest first."""
        with _mlflow_errors(f"read the history of {name!r}", ModelUri(name)):
            model = self._client.get_registered_model(check_model_name(name))
        return audit.entries(model.tags or {})

    def download(self, version: Version, dest: Path, file: str | None = None) -> Path:
        """The version's files (or one ``file``) as the artifact store holds them, into ``dest``: NOT verified."""
        from mlflow.artifacts import download_artifacts
        source = version.source if file is None else f"{version.source.rstrip('/')}/{file}"
        with _mlflow_errors(f"download {version.uri}" + (f" {file}" if file else "")):
            return Path(download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=self.uri))

    # -- writing -------------------------------------------------------------------------------

    def register(self, model_dir: Path, name: str, *, version_dir: str | None = None,
                 tags: Mapping[str, str] | None = None, actor: str | None = None) -> Version:
        """A new version holding ``model_dir``'s files and their manifest."""
        check_model_name(name)
        chosen, files = layout.model_files(model_dir, name, version_dir)
        data = manifest.build(name, chosen, files)
        all_tags = {**(tags or {}), TAG_MANIFEST: manifest.digest(data), TAG_VERSION_DIR: chosen}
        with tempfile.TemporaryDirectory(prefix="shadowserve-register-") as tmp:
            staged = Path(tmp)
            for rel, path in files.items():
                (staged / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staged / rel)
            (staged / manifest.MANIFEST_NAME).write_bytes(data)
            with _mlflow_errors(f"register {name!r}"):
                run = self._client.create_run(self._experiment_id(), tags={"mlflow.runName": f"register {name}"})
                self._client.log_artifacts(run.info.run_id, str(staged), artifact_path=ARTIFACT_PATH)
                self._client.set_terminated(run.info.run_id)
                self._ensure_model(name)
                created = self._client.create_model_version(name, f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
                                                            run_id=run.info.run_id, tags=all_tags)
        version = _version(created, ModelUri(name))
        self.record(name, AuditEntry.now("register", actor=actor, version=version.version,
                                         details={"manifest_sha256": version.manifest_digest, "files": len(files),
                                                  "source_directory": str(model_dir)}))
        return version

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "", actor: str | None = None,
                  action: str = "alias", details: Mapping[str, Any] | None = None) -> AuditEntry:
        """Point ``alias`` at ``version`` and write the move into the audit log."""
        check_alias(alias)
        target = self.resolve(ModelUri(check_model_name(name), version=version))
        try:
            previous: int | None = self.resolve(ModelUri(name, alias=alias)).version
        except NotFound:
            previous = None
        with _mlflow_errors(f"move @{alias} of {name!r}"):
            self._client.set_registered_model_alias(name, alias, str(target.version))
        entry = AuditEntry.now(action, actor=actor, version=target.version, alias=alias, previous=previous,
                               reason=reason, details=details or {})
        self.record(name, entry)
        return entry

    def record(self, name: str, entry: AuditEntry) -> None:
        """Append an entry to the audit log."""
        key, value = entry.encode()
        with _mlflow_errors(f"write the audit log of {name!r}", ModelUri(name)):
            self._client.set_registered_model_tag(name, key, value)

    def tag_version(self, name: str, version: int, tags: Mapping[str, str]) -> None:
        with _mlflow_errors(f"tag models:/{name}/{version}", ModelUri(name, version=version)):
            for key, value in tags.items():
                self._client.set_model_version_tag(name, str(version), key, value)

    def attach(self, version: Version, path: Path, artifact_path: str) -> None:
        """Store a file (evidence) with the version's artifacts, under ``artifact_path``."""
        if version.run_id is None:
            raise RegistryError(f"{version.uri} has no run to attach {path.name} to")
        with _mlflow_errors(f"attach {path.name} to {version.uri}"):
            self._client.log_artifact(version.run_id, str(path), artifact_path=artifact_path)

    def _experiment_id(self) -> str:
        if self._experiment is None:
            found = self._client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                self._experiment = str(found.experiment_id)
            else:
                location = self._artifacts.resolve().as_uri() if self._artifacts is not None else None
                self._experiment = str(self._client.create_experiment(EXPERIMENT, artifact_location=location))
        return self._experiment

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException
        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _version(found: Any, asked: ModelUri) -> Version:
    """A version from the registry's answer, which must be about what was asked: its name and number
    become directory names, and its digest a cache path, so a registry that lies is refused here."""
    tags = dict(found.tags or {})
    number = str(found.version)
    if found.name != asked.name or not number.isdigit() or int(number) <= 0 or (
            asked.version is not None and int(number) != asked.version):
        raise Unreachable(f"the registry answered {found.name!r} version {number!r} when asked for {asked}: "
                          "it is not a registry to trust")
    digest = tags.get(TAG_MANIFEST, "")
    if digest and not DIGEST.fullmatch(digest):
        digest = ""  # not a SHA-256: treated as no manifest, which a pull refuses
    return Version(found.name, int(number), digest, found.source, found.run_id or None,
                   tags, tuple(getattr(found, "aliases", None) or ()))


@contextlib.contextmanager
def _mlflow_errors(doing: str, target: ModelUri | None = None) -> Iterator[None]:
    """MLflow's and the network's exceptions as one-line registry errors."""
    from mlflow.exceptions import MlflowException
    try:
        yield
    except RegistryError:
        raise
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        first = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()
        message = first[0] if first else code
        # MLflow answers an unknown alias with INVALID_PARAMETER_VALUE "... alias x not found"
        if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in message.lower():
            raise NotFound(_not_found(target, message)) from None
        if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
            raise RegistryError(f"cannot {doing}: {message}") from None
        if message.startswith("API request to") and "failed with exception" in message:
            raise Unreachable(f"cannot {doing}: the registry is unreachable ({_network_reason(message)})") from None
        raise Unreachable(f"cannot {doing}: the registry failed ({message[:300]})") from None
    except OSError as exc:  # connection refused, a timeout, an unreadable local store
        raise Unreachable(f"cannot {doing}: the registry is unreachable ({str(exc).splitlines()[0][:300]})") \
            from None
    except Exception as exc:  # requests' and SQLAlchemy's own exceptions: the registry failed us
        kind = type(exc).__module__.split(".")[0]
        if kind in ("requests", "urllib3", "sqlalchemy", "alembic", "http"):
            raise Unreachable(f"cannot {doing}: the registry is unreachable or broken "
                              f"({str(exc).splitlines()[0][:300] if str(exc) else kind})") from None
        raise


def _network_reason(message: str) -> str:
    """What went wrong under MLflow's "API request to ... failed with exception ..." line."""
    for marker, reason in (("NewConnectionError", "connection refused or no route"),
                           ("timed out", "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT"),
                           ("RemoteDisconnected", "it closed the connection"),
                           ("NameResolutionError", "the host name does not resolve"),
                           ("SSLError", "TLS failed")):
        if marker in message:
            return reason
    return message.split("failed with exception", 1)[1].strip()[:200]


def _not_found(target: ModelUri | None, message: str) -> str:
    if target is None:
        return message
    if target.alias:
        return f"{target} does not exist: model {target.name!r} has no alias {target.alias!r}, or no such model"
    if target.version is not None:
        return f"{target} does not exist: no version {target.version} of model {target.name!r}, or no such model"
    return f"model {target.name!r} is not registered"
