"""The MLflow account of the Ray containers, made and kept in step with docker/.env.

Run by the one-shot `mlflow-users` service of docker/compose.yaml at every `up`, as the MLflow
admin, against the basic-auth server (REST API only, standard library only). Idempotent:

1. the account SATI_MLFLOW_USERNAME exists, is no admin, and has the password SATI_MLFLOW_PASSWORD
   (created, or its password reset: rotate it in docker/.env, then `up -d`);
2. each experiment of SATI_MLFLOW_EXPERIMENTS (comma-separated) exists, made by the admin, and
   the account has EDIT on it: create runs, log params, metrics, tags and artifacts, end runs,
   but not delete the experiment or its runs, nor give anyone permissions on it (MANAGE);
3. experiments the account made itself (MLflow gives the creator MANAGE) are lowered to EDIT;
4. the model registry is closed to it: DENY on every registered model and prompt, so it can
   neither register nor alias models, nor change a version's tags (its file manifest);
5. so are logged models, in every experiment: DENY on logged models (MLflow grants them by
   wildcard only). `sati promote` logs the promoted model into the search's experiment, where this
   account has EDIT; without this DENY it could write files into a promoted model
   (`<experiment>/models/m-*/artifacts/`: a `.pyc`, a changed `best.pt`). A search never logs a
   model (its driver logs runs, metrics and run artifacts only), so the DENY takes nothing it needs.

Promotion (`sati promote`) is done by a person, with an account of their own.

Everything else follows the server's `default_permission` (READ in the stack). Secrets come
from the environment only and are never printed.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

EDIT, MANAGE, DENY = "EDIT", "MANAGE", "DENY"
# Denied to the account: the registry, and the logged models that promoted versions point at.
DENIED_TYPES = ("registered_model", "prompt", "logged_model")


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, code: str, message: str):
        super().__init__(f"{method} {path}: HTTP {status} {code}: {message}")
        self.status, self.code = status, code


class Server:
    """The MLflow REST API, as one user (HTTP basic auth)."""

    def __init__(self, uri: str, username: str, password: str):
        self.uri = uri.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        url = self.uri + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                payload = json.loads(text)
                code, message = payload.get("error_code", ""), payload.get("message", text)
            except ValueError:
                code, message = "", text.strip()[:500]
            raise ApiError(method, path, e.code, code, message) from None
        return json.loads(raw) if raw.strip() else {}


def ensure_user(server: Server, username: str, password: str) -> None:
    try:
        user = server.call("GET", "/api/2.0/mlflow/users/get", query={"username": username})["user"]
    except ApiError as e:
        if e.code != "RESOURCE_DOES_NOT_EXIST":
            raise
        server.call("POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password})
        print(f"mlflow-users: created the user {username}")
        return
    # An admin resets another user's password without the old one: docker/.env stays the truth.
    server.call("PATCH", "/api/2.0/mlflow/users/update-password", {"username": username, "password": password})
    if user.get("is_admin"):
        server.call("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": username, "is_admin": False})
        print(f"mlflow-users: {username} was an admin; it is not any more")
    print(f"mlflow-users: the user {username} exists; its password follows docker/.env")


def set_grant(server: Server, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Exactly ``permission`` on one resource (the grant API refuses to overwrite: revoke first)."""
    grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
    try:
        server.call("POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": permission})
    except ApiError as e:
        if e.code != "RESOURCE_ALREADY_EXISTS":
            raise
        server.call("POST", "/api/3.0/mlflow/users/permissions/revoke", grant)
        server.call("POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": permission})


def ensure_experiment(server: Server, name: str) -> str:
    try:
        experiment = server.call("GET", "/api/2.0/mlflow/experiments/get-by-name", query={"experiment_name": name})
        return experiment["experiment"]["experiment_id"]
    except ApiError as e:
        if e.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    experiment_id = server.call("POST", "/api/2.0/mlflow/experiments/create", {"name": name})["experiment_id"]
    print(f"mlflow-users: created the experiment {name} ({experiment_id})")
    return experiment_id


def main() -> int:
    env = os.environ
    uri = env.get("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    admin, user = env["MLFLOW_ADMIN_USERNAME"], env["SATI_MLFLOW_USERNAME"]
    password = env["SATI_MLFLOW_PASSWORD"]
    experiments = [name.strip() for name in env.get("SATI_MLFLOW_EXPERIMENTS", "").split(",") if name.strip()]
    if not user or user == admin:
        print(f"mlflow-users: SATI_MLFLOW_USERNAME must name an account of its own, not the admin ({admin})")
        return 2
    if len(password) < 12 or password == env["MLFLOW_ADMIN_PASSWORD"]:
        print("mlflow-users: SATI_MLFLOW_PASSWORD needs 12 characters or more and must differ from the admin's")
        return 2
    server = Server(uri, admin, env["MLFLOW_ADMIN_PASSWORD"])
    try:
        ensure_user(server, user, password)
        for name in experiments:
            set_grant(server, user, "experiment", ensure_experiment(server, name), EDIT)
        listed = server.call("GET", "/api/3.0/mlflow/users/permissions/list", query={"username": user})
        for row in listed.get("permissions", []):
            if row["resource_type"] == "experiment" and row["permission"] == MANAGE:
                set_grant(server, user, "experiment", row["resource_pattern"], EDIT)
                print(f"mlflow-users: {user}: MANAGE on experiment {row['resource_pattern']} lowered to EDIT")
        for resource_type in DENIED_TYPES:
            set_grant(server, user, resource_type, "*", DENY)
    except ApiError as e:
        if e.status == 401:
            print(
                f"mlflow-users: the MLflow admin {admin} was refused: MLFLOW_ADMIN_PASSWORD must be the admin's "
                "current password (the server sets it at its first start only)"
            )
        else:
            print(f"mlflow-users: {e}")
        return 1
    print(
        f"mlflow-users: {user}: EDIT on {', '.join(experiments) or 'no experiment'}; registry and logged models denied"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
