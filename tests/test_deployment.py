"""Static checks of the deployment files: Dockerfile, Compose files, env templates, Orthanc and docs.

Nothing here builds an image or starts a container, so the checks run in well under a second.
Two optional checks run the real `docker compose config` and hadolint when they are installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from packaging.requirements import Requirement
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OVERRIDES = sorted(DEPLOY.glob("docker-compose.*.yml"))
COMPOSE_FILES = [COMPOSE, *OVERRIDES]
SATS_ENV_EXAMPLE = DEPLOY / "sats.env.example"
ORTHANC_CONFIG = DEPLOY / "orthanc.json"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

SATS_VARIABLE = re.compile(r"(?<![A-Za-z0-9_])SATS_[A-Z0-9_]+")
ENV_ASSIGNMENT = re.compile(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
FIRST_PARTY = frozenset({"app", "worker", "model"})


# --- Loading Compose files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reset:
    """Value tagged ``!reset`` in a Compose override, which removes the base file's value."""

    value: Any


class _ComposeConstructor(SafeConstructor):
    """Safe YAML constructor that also reads Compose's merge tags ``!reset`` and ``!override``."""


def _construct_plain(constructor: SafeConstructor, node: Node) -> Any:
    if isinstance(node, MappingNode):
        return constructor.construct_mapping(node, deep=True)
    if isinstance(node, SequenceNode):
        return constructor.construct_sequence(node, deep=True)
    return constructor.construct_scalar(node)


_ComposeConstructor.add_constructor("!reset", lambda constructor, node: Reset(_construct_plain(constructor, node)))
_ComposeConstructor.add_constructor("!override", _construct_plain)


def load_compose(path: Path) -> dict[str, Any]:
    """Load a Compose file, reading ``!reset`` values as :class:`Reset` and ``!override`` values as plain values."""
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _ComposeConstructor
    document = yaml.load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def without_tags(value: Any) -> Any:
    """Return a copy of a loaded Compose document with each :class:`Reset` replaced by its value."""
    if isinstance(value, Reset):
        return without_tags(value.value)
    if isinstance(value, dict):
        return {key: without_tags(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_tags(item) for item in value]
    return value


def compose_schema() -> dict[str, Any]:
    """Return the Compose Specification JSON schema vendored by check-jsonschema."""
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(schema_file.read_text(encoding="utf-8"))


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's ``environment`` as a mapping, whether written as a mapping or a list."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's volume mounts in short syntax as {container path: source}."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


# --- Parsing the Dockerfile --------------------------------------------------------------------


@dataclass
class Stage:
    """One build stage of the Dockerfile: its base, name and instructions."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        """Return the arguments of every instruction with this keyword, in order."""
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """Yield (KEYWORD, arguments) per instruction, with continuation lines joined and comments dropped."""
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        yield keyword.upper(), arguments.strip()
        logical = ""


def parse_dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    """Return the global ARG defaults and the stages by name."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3, f"every stage needs a name: FROM {arguments}"
            assert words[1].upper() == "AS", f"every stage needs a name: FROM {arguments}"
            current = Stage(base=words[0], name=words[2])
            stages[current.name] = current
        elif current is None:
            if keyword == "ARG" and "=" in arguments:
                name, value = arguments.split("=", 1)
                global_args[name] = value
        else:
            current.instructions.append((keyword, arguments))
    return global_args, stages


def stage_sources(stage: Stage) -> set[str]:
    """Return the names of the stages that a stage builds on or copies or mounts files from."""
    sources = {stage.base}
    for _, arguments in stage.instructions:
        sources.update(re.findall(r"--from=([\w.-]+)", arguments))
        sources.update(re.findall(r"\bfrom=([\w.-]+)", arguments))
    return sources


def stages_behind(name: str, stages: dict[str, Stage]) -> list[Stage]:
    """Return a stage and every stage whose files can reach it."""
    seen: list[Stage] = []
    pending = [name]
    while pending:
        stage = stages[pending.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        pending.extend(source for source in stage_sources(stage) if source in stages)
    return seen


def pip_install_commands(stage: Stage) -> list[str]:
    """Return each ``pip install`` command of a stage's RUN instructions."""
    commands = []
    for run in stage.arguments("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            if re.search(r"\bpip3? install\b", command):
                commands.append(command.strip())
    return commands


def load_gateway_requirements_module() -> ModuleType:
    """Import deploy/gateway_requirements.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("gateway_requirements", DEPLOY / "gateway_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Settings and docs -------------------------------------------------------------------------


def settings_variables() -> dict[str, str]:
    """Return {environment variable: field name} for every Settings field."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): name for name in Settings.model_fields}


def documented_default(name: str) -> str | None:
    """Return a Settings field's default as the docs table writes it, or None when it has none."""
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if default is None or default == []:
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def settings_table() -> dict[str, list[str]]:
    """Return the rows of docs/deployment.md's settings table as {variable: cells after the first}."""
    rows = {}
    for line in DEPLOYMENT_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`(SATS_[A-Z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


# --- Compose files -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_matches_compose_spec(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(compose_schema())
    errors = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(without_tags(load_compose(path)))
    ]
    assert errors == [], f"{path.name} does not match the Compose Specification:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_compose_file_has_no_version_key(path: Path) -> None:
    assert "version" not in load_compose(path), f"{path.name}: the Compose Specification has no version key"


def test_compose_defines_expected_services() -> None:
    services = load_compose(COMPOSE)["services"]
    assert set(services) == {"redis", "gateway", "dicom", "worker", "flower", "orthanc"}


def test_worker_reserves_one_nvidia_gpu() -> None:
    worker = load_compose(COMPOSE)["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == 1
    assert devices[0]["capabilities"] == ["gpu"]


def test_gpu_reservations_use_count_or_device_ids() -> None:
    # Docker rejects a device request that sets both (moby: errConflictCountDeviceIDs).
    for path in COMPOSE_FILES:
        for name, service in load_compose(path).get("services", {}).items():
            reservations = without_tags(service.get("deploy", {}).get("resources", {}).get("reservations", {}))
            for device in reservations.get("devices", []):
                assert not ("count" in device and "device_ids" in device), f"{path.name}: {name} sets both"


def test_two_gpu_override_pins_workers_to_distinct_gpus() -> None:
    services = load_compose(DEPLOY / "docker-compose.two-gpus.yml")["services"]
    device_ids = [
        tuple(device["device_ids"])
        for service in services.values()
        for device in service["deploy"]["resources"]["reservations"]["devices"]
    ]
    assert sorted(device_ids) == [("0",), ("1",)]


def test_cpu_override_resets_gpu_reservation() -> None:
    worker = load_compose(DEPLOY / "docker-compose.cpu.yml")["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == Reset([])
    assert service_environment(worker)["SATS_DEVICE"] == "cpu"


def redis_commands() -> dict[str, list[str]]:
    """Return the Redis command words of each Compose file that sets one, by file name."""
    commands = {}
    for path in COMPOSE_FILES:
        command = load_compose(path).get("services", {}).get("redis", {}).get("command")
        if command is not None:
            commands[path.name] = shlex.split(command) if isinstance(command, str) else [str(word) for word in command]
    return commands


def test_redis_runs_with_appendonly() -> None:
    commands = redis_commands()
    assert COMPOSE.name in commands
    for name, words in commands.items():
        assert "--appendonly" in words, name
        assert words[words.index("--appendonly") + 1] == "yes", name
        assert "--maxmemory-policy" in words, name
        assert words[words.index("--maxmemory-policy") + 1] == "noeviction", name


def test_redis_keeps_its_data_in_a_volume() -> None:
    redis = load_compose(COMPOSE)["services"]["redis"]
    assert volume_mounts(redis)["/data"] == "redis-data"
    assert "healthcheck" in redis


def test_gateway_and_worker_share_data_volume() -> None:
    services = load_compose(COMPOSE)["services"]
    for name in ("gateway", "worker"):
        data_dir = service_environment(services[name])["SATS_DATA_DIR"]
        assert volume_mounts(services[name]).get(data_dir) == "sats-data", f"{name} does not mount sats-data there"
    assert "sats-data" in load_compose(COMPOSE)["volumes"]


def test_gateway_and_worker_wait_for_healthy_redis() -> None:
    services = load_compose(COMPOSE)["services"]
    for name in ("gateway", "worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_gateway_publishes_port_8000_and_reads_env_file() -> None:
    gateway = load_compose(COMPOSE)["services"]["gateway"]
    assert "8000:8000" in gateway["ports"]
    assert gateway["env_file"] == "deploy/sats.env"


def test_flower_requires_basic_auth() -> None:
    flower = load_compose(COMPOSE)["services"]["flower"]
    assert "deploy/flower.env" in flower["env_file"]
    command = " ".join(flower["command"])
    assert 'test -n "$${FLOWER_BASIC_AUTH}"' in command
    assert "flower --port 5555" in command
    assert flower["ports"] == ["127.0.0.1:5555:5555"]


def test_worker_image_includes_flower() -> None:
    # The flower service runs from the worker image, which installs pyproject.toml's dependencies.
    module = load_gateway_requirements_module()
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    assert "flower" in {module.requirement_name(requirement) for requirement in dependencies}
    flower = load_compose(COMPOSE)["services"]["flower"]
    assert flower["build"]["target"] == "worker"


def test_orthanc_publishes_dicom_and_http_ports() -> None:
    orthanc = load_compose(COMPOSE)["services"]["orthanc"]
    assert sorted(orthanc["ports"]) == ["4242:4242", "8042:8042"]
    assert volume_mounts(orthanc)["/var/lib/orthanc/db"] == "orthanc-db"


def test_images_are_pinned_by_tag() -> None:
    global_args, _ = parse_dockerfile()
    images = [value for name, value in global_args.items() if name.endswith("_IMAGE")]
    images += [service["image"] for service in load_compose(COMPOSE)["services"].values() if "build" not in service]
    assert images, "no base images found"
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{image} has no tag"
        assert tag, f"{image} has no tag"
        assert "/" not in tag, f"{image} has no tag"
        assert tag != "latest", f"{image} is not pinned"


# --- Environment variables ---------------------------------------------------------------------


def deployment_texts() -> dict[str, str]:
    """Return the text of every deployment file that can name SATS_* variables."""
    paths = [DOCKERFILE, *COMPOSE_FILES, *sorted(DEPLOY.glob("*.env.example")), DEPLOYMENT_DOC]
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in paths}


def test_sats_variables_exist_in_settings() -> None:
    known = set(settings_variables())
    for name, text in deployment_texts().items():
        unknown = set(SATS_VARIABLE.findall(text)) - known
        assert unknown == set(), f"{name} names variables that app.settings.Settings does not define"


def test_env_example_lists_every_setting() -> None:
    listed = set(ENV_ASSIGNMENT.findall(SATS_ENV_EXAMPLE.read_text(encoding="utf-8")))
    missing = set(settings_variables()) - listed
    assert missing == set(), f"{SATS_ENV_EXAMPLE.name} does not list these settings"


def test_env_example_sets_only_what_it_must() -> None:
    # Uncommented lines override the defaults, so the template sets only the key digests, the
    # Compose Redis URL, and the Compose Orthanc as allowed sender and as destination.
    text = SATS_ENV_EXAMPLE.read_text(encoding="utf-8")
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    assert assigned == {"SATS_API_KEY_SHA256", "SATS_REDIS_URL", "SATS_DICOM_ALLOWED_AETS", "SATS_DESTINATIONS"}
    assert re.search(r"^SATS_API_KEY_SHA256=$", text, re.MULTILINE), "the template must not ship a key digest"


def test_settings_table_lists_every_setting() -> None:
    table = settings_table()
    variables = set(settings_variables())
    assert variables - set(table) == set(), "docs/deployment.md's settings table lacks these settings"
    assert set(table) - variables == set(), "docs/deployment.md's settings table lists unknown settings"


def test_settings_table_defaults_match_settings() -> None:
    table = settings_table()
    for variable, name in settings_variables().items():
        assert variable in table, f"docs/deployment.md's settings table lacks {variable}"
        default_cell = table[variable][0]
        expected = documented_default(name)
        if expected is None:
            assert default_cell == "unset", f"{variable}: default cell {default_cell!r}, expected 'unset'"
        else:
            assert default_cell == f"`{expected}`", f"{variable}: default cell {default_cell!r}, expected `{expected}`"


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_has_gateway_and_worker_targets() -> None:
    _, stages = parse_dockerfile()
    assert {"gateway", "worker"} <= set(stages)


def test_gateway_stage_installs_no_torch() -> None:
    _, stages = parse_dockerfile()
    chain = stages_behind("gateway", stages)
    assert "worker" not in {stage.name for stage in chain}, "the gateway image takes files from the worker stage"
    commands = [command for stage in chain for command in pip_install_commands(stage)]
    assert commands, "no pip install found behind the gateway stage"
    for command in commands:
        assert "torch" not in command, f"gateway pip command installs torch: {command}"
    wheel_installs = [command for command in commands if "sats-" in command]
    assert wheel_installs, "the gateway does not install the sats wheel"
    for command in wheel_installs:
        assert "--no-deps" in command, f"the sats wheel would pull in torch: {command}"


def test_gateway_requirements_exclude_worker_only_packages() -> None:
    module = load_gateway_requirements_module()
    names = {
        module.requirement_name(requirement) for requirement in module.gateway_requirements(ROOT / "pyproject.toml")
    }
    assert "torch" not in names
    assert names & module.WORKER_ONLY == set()
    assert {"fastapi", "uvicorn", "celery", "redis"} <= names


def test_gateway_stage_runs_uvicorn_as_non_root() -> None:
    _, stages = parse_dockerfile()
    gateway = stages["gateway"]
    assert gateway.base == "${PYTHON_IMAGE}"
    assert gateway.arguments("USER")[-1].split(":")[0] not in {"root", "0"}
    command = json.loads(gateway.arguments("CMD")[-1])
    assert command[:3] == ["uvicorn", "--factory", "app.main:create_app"]


def test_gateway_stage_checks_healthz() -> None:
    _, stages = parse_dockerfile()
    healthcheck = stages["gateway"].arguments("HEALTHCHECK")
    assert len(healthcheck) == 1
    assert "http://127.0.0.1:8000/healthz" in healthcheck[0]


def test_worker_stage_installs_cuda_torch() -> None:
    global_args, stages = parse_dockerfile()
    worker = stages["worker"]
    assert worker.base == "${CUDA_IMAGE}"
    assert global_args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert global_args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    commands = pip_install_commands(worker)
    assert any('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in command for command in commands)


def test_worker_stage_runs_one_job_as_non_root() -> None:
    _, stages = parse_dockerfile()
    worker = stages["worker"]
    assert worker.arguments("USER")[-1].split(":")[0] not in {"root", "0"}
    command = " ".join(json.loads(worker.arguments("CMD")[-1]))
    assert "celery -A worker.celery_app:celery_app worker" in command
    assert "--concurrency 1 --prefetch-multiplier 1" in command


def test_dockerfile_torch_version_matches_makefile() -> None:
    global_args, _ = parse_dockerfile()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.MULTILINE)
    assert match, "Makefile has no TORCH_SPEC ?= torch==VERSION line"
    assert global_args["TORCH_VERSION"] == match.group(1)


def test_images_share_the_data_directory_owner() -> None:
    _, stages = parse_dockerfile()
    for name in ("gateway", "worker"):
        runs = " ".join(stages[name].arguments("RUN"))
        assert "--uid 10001" in runs, name
        assert "chown sats:sats /data" in runs, name
        assert "SATS_DATA_DIR=/data" in " ".join(stages[name].arguments("ENV")), name


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for pattern in (".git", ".venv", "runs", "data", "sats-data", ".pytest_cache", "deploy/*.env", "tests"):
        assert pattern in patterns, f".dockerignore lacks {pattern}"
    for needed in ("pyproject.toml", "README.md", "app", "worker", "model", "deploy"):
        assert needed not in patterns, f".dockerignore drops {needed}, which the build needs"


# --- What the gateway image must contain -------------------------------------------------------


def _imports_in(tree: ast.AST, module: str, is_package: bool, everywhere: bool) -> Iterator[tuple[str, list[str]]]:
    """Yield (imported module, imported names) for the import statements of a parsed module.

    Without ``everywhere``, only statements that run at import time count: function bodies and
    ``if TYPE_CHECKING:`` blocks are skipped.
    """
    package = module if is_package else module.rpartition(".")[0]
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if not everywhere and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = node.module or ""
            target = f"{base}.{name}".strip(".") if node.level else name
            yield target, [alias.name for alias in node.names]
        pending.extend(ast.iter_child_nodes(node))


def _first_party_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def gateway_third_party_imports() -> dict[str, str]:
    """Return {top-level third-party module: first importing file} for what the gateway runs.

    Every file of app/ counts, function-level imports included. A first-party module that it
    imports (worker.*, model.*) counts with its import-time imports, and so do its packages.
    """
    found: dict[str, str] = {}
    visited: set[str] = set()
    pending = [(".".join(path.relative_to(ROOT).with_suffix("").parts), True) for path in (ROOT / "app").rglob("*.py")]
    while pending:
        module, everywhere = pending.pop()
        module = module.removesuffix(".__init__")
        if module in visited:
            continue
        visited.add(module)
        path = _first_party_file(module)
        if path is None:
            continue
        parents = module.split(".")
        pending.extend((".".join(parents[:depth]), False) for depth in range(1, len(parents)))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, names in _imports_in(tree, module, path.name == "__init__.py", everywhere):
            top = target.split(".")[0]
            if top in FIRST_PARTY:
                pending.append((target, False))
                pending.extend((f"{target}.{name}", False) for name in names if _first_party_file(f"{target}.{name}"))
            elif top and top not in sys.stdlib_module_names:
                found.setdefault(top, path.relative_to(ROOT).as_posix())
    return found


def installed_closure(requirements: list[str]) -> set[str]:
    """Return the normalized names of these distributions and of everything they require, recursively."""
    normalize = load_gateway_requirements_module().normalize
    closure: set[str] = set()
    pending = [Requirement(requirement) for requirement in requirements]
    while pending:
        requirement = pending.pop()
        name = normalize(requirement.name)
        if name in closure or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending.extend(Requirement(text) for text in requires)
    return closure


def test_gateway_imports_no_torch() -> None:
    imports = gateway_third_party_imports()
    assert "torch" not in imports, f"the gateway imports torch (first in {imports.get('torch')})"


def test_gateway_image_installs_what_app_imports() -> None:
    module = load_gateway_requirements_module()
    installed = installed_closure(module.gateway_requirements(ROOT / "pyproject.toml"))
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for top, importer in sorted(gateway_third_party_imports().items()):
        names = {module.normalize(name) for name in distributions.get(top, [])}
        if not names:
            problems.append(f"{importer} imports {top!r}, which no installed distribution provides")
        elif not names & installed:
            problems.append(
                f"{importer} imports {top!r} from {sorted(names)}, which the gateway image does not install: "
                "add it to pyproject.toml's dependencies, or remove it from WORKER_ONLY in "
                "deploy/gateway_requirements.py"
            )
    assert problems == [], "\n".join(problems)


# --- Orthanc -----------------------------------------------------------------------------------


def test_orthanc_config_enables_dicomweb() -> None:
    config = json.loads(ORTHANC_CONFIG.read_text(encoding="utf-8"))
    assert config["DicomWeb"]["Enable"] is True
    server = config["DicomWeb"]["Servers"]["sats"]
    assert server["Url"] == "http://gateway:8000/dicomweb/"
    assert server["HttpHeaders"]["Authorization"] == "Bearer ${ORTHANC_SATS_API_KEY}"
    orthanc = load_compose(COMPOSE)["services"]["orthanc"]
    assert service_environment(orthanc)["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert volume_mounts(orthanc)["/etc/orthanc/orthanc.json"] == "./deploy/orthanc.json"


def test_orthanc_requires_login() -> None:
    config = json.loads(ORTHANC_CONFIG.read_text(encoding="utf-8"))
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"admin": "${ORTHANC_ADMIN_PASSWORD}"}


def test_orthanc_config_variables_are_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)\}", ORTHANC_CONFIG.read_text(encoding="utf-8")))
    listed = set(ENV_ASSIGNMENT.findall((DEPLOY / "orthanc.env.example").read_text(encoding="utf-8")))
    assert used, "orthanc.json reads no environment variable"
    assert used - listed == set(), "orthanc.env.example lacks variables that orthanc.json reads"


# --- Optional checks with the real tools -------------------------------------------------------


def compose_command() -> list[str] | None:
    """Return the command of Docker Compose v2, or None when it is not installed."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        result = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and re.search(r"\bv?2\.\d+", result.stdout):
            return command
    return None


def test_docker_compose_config_accepts_files(tmp_path: Path) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed")
    shutil.copy(COMPOSE, tmp_path)
    shutil.copy(DOCKERFILE, tmp_path)
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns("*.env"))
    for example in (tmp_path / "deploy").glob("*.env.example"):
        example.with_name(example.name.removesuffix(".example")).write_text(example.read_text())
    multihost_variables = {
        "REDIS_PASSWORD": "password",
        "REDIS_BIND_ADDRESS": "10.0.0.5",
        "NFS_SERVER": "10.0.0.9",
        "NFS_EXPORT": "/export/sats",
    }
    environment = {"PATH": os.environ.get("PATH", ""), **multihost_variables}
    for override in [None, *OVERRIDES]:
        files = ["-f", "docker-compose.yml"] + (["-f", f"deploy/{override.name}"] if override else [])
        result = subprocess.run(
            [*command, *files, "config", "--quiet"],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"docker compose config rejects {files}: {result.stderr}"


def test_hadolint_accepts_dockerfile() -> None:
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed")
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
