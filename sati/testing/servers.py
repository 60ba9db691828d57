"""Real servers on 127.0.0.1 for tests and benchmarks: Postgres, ``mlflow server`` (SQLite or
Postgres backend store, artifacts proxied to a folder) and an S3-compatible object store (moto)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sati.testing.processes import Service, free_port, loopback_env, wait_for


def postgres_bindir() -> Path | None:
    """The directory of `initdb` and `postgres` (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_missing() -> str | None:
    """Why a private Postgres cannot run here, or None."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "postgres").exists():
        return "Postgres server binaries (initdb, postgres) not found; apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run initdb as"
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


class Postgres:
    """A private Postgres on 127.0.0.1:<port>, trust auth, in a mkdtemp under /tmp.

    initdb refuses to run as root, so as root it runs as the `postgres` user, and its directory lies
    outside pytest's 0700 tmp tree, which that user cannot enter."""

    def __init__(self, env: dict, log_dir: Path):
        bindir = postgres_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="sati-pg-", dir="/tmp"))
        user: dict = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        env = {**env, "LC_ALL": "C", "LANG": "C"}
        data = self.base / "data"
        out = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            **user,
        )
        if out.returncode != 0:
            shutil.rmtree(self.base, ignore_errors=True)
            raise RuntimeError(f"initdb failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        self.service = Service(
            "postgres",
            [
                bindir / "postgres",
                "-D",
                data,
                "-h",
                "127.0.0.1",
                "-p",
                self.port,
                "-k",
                self.base,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            log_dir / "postgres.log",
            env,
            cwd=self.base,
            **user,
        )
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def _connect(self, dbname: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=5)

    def wait_ready(self, timeout_s: float = 120) -> None:
        def up():
            try:
                self._connect("postgres").close()
                return True
            except Exception:
                return False

        wait_for(up, timeout_s, "postgres", self.service.proc, self.service.log_path)
        conn = self._connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()

    def query(self, sql: str) -> list[tuple]:
        conn = self._connect("mlflow")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def stop(self) -> None:
        self.service.stop(signal.SIGINT, grace_s=30)  # SIGINT: Postgres' fast shutdown
        shutil.rmtree(self.base, ignore_errors=True)


def answers(url: str) -> Callable[[], bool]:
    """A predicate for ``wait_for``: whether ``url`` answers an HTTP GET without an error."""

    def up() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False

    return up


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (one worker, no job runner): backend store ``sqlite`` (a file in
    ``root``) or a database URL such as ``Postgres.url``; artifacts proxied to ``root/artifacts``.

    With ``admin_password``, MLflow's basic-auth app (``--app-name basic-auth``, needs ``mlflow[auth]``)
    as ``docker/compose.yaml`` runs it: users in ``root/auth.db``, the admin ``AUTH_ADMIN`` made at the first
    start with that password, READ for everyone on what they were granted nothing on."""

    AUTH_ADMIN = "admin"

    def __init__(
        self,
        root: Path,
        backend: str = "sqlite",
        env: dict | None = None,
        wait: bool = True,
        admin_password: str | None = None,
    ):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        store = f"sqlite:///{root / 'mlflow.db'}" if backend == "sqlite" else backend
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", self.port, "--workers",
                "1", "--backend-store-uri", store, "--artifacts-destination", root / "artifacts"]  # fmt: skip
        env = env or loopback_env()
        if admin_password is not None:
            import secrets

            config = root / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = {self.AUTH_ADMIN}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "auth_cache_ttl_seconds = 60\n"  # one password hash per user a minute, not one per request
            )
            env = {
                **env,
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
            }
            argv += ["--app-name", "basic-auth"]
        self.service = Service("mlflow", argv, root / "server.log", env)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 240) -> None:
        wait_for(answers(self.uri + "/health"), timeout_s, "mlflow server", self.service.proc, self.service.log_path)

    def stop(self) -> None:
        self.service.stop()


def s3_server_missing() -> str | None:
    """Why ``S3Server`` cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        return "moto's S3 server is not installed (pip install 'moto[server]')"
    return None


class S3Server:
    """An S3-compatible server on 127.0.0.1 (moto's, in memory: nothing is written to disk) with one
    bucket. ``storage_uri(prefix)`` is an ``s3://`` URI that Ray Tune and pyarrow resolve to it; the
    processes that use it need ``env`` (dummy credentials and region, no EC2 metadata look-ups)."""

    def __init__(self, root: Path, bucket: str = "sati-test", wait: bool = True):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.endpoint}"
        self.bucket = bucket
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # the AWS SDK would otherwise ask 169.254.169.254
        }
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", self.port]
        self.service = Service("s3", argv, root / "s3-server.log", loopback_env(**self.env))
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 120) -> None:
        up = answers(self.url + "/moto-api/data.json")
        wait_for(up, timeout_s, "moto S3 server", self.service.proc, self.service.log_path)
        self.filesystem().create_dir(self.bucket)

    def filesystem(self):
        """A ``pyarrow.fs.S3FileSystem`` on this server (paths are ``<bucket>/<key>``)."""
        import pyarrow.fs

        return pyarrow.fs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region=self.env["AWS_DEFAULT_REGION"],
            scheme="http",
            endpoint_override=self.endpoint,
            allow_bucket_creation=True,
        )

    def storage_uri(self, prefix: str = "") -> str:
        """``s3://<bucket>/<prefix>?scheme=http&endpoint_override=127.0.0.1:<port>``."""
        path = "/".join(p for p in (self.bucket, prefix.strip("/")) if p)
        return f"s3://{path}?scheme=http&endpoint_override={self.endpoint}"

    def stop(self) -> None:
        self.service.stop()
