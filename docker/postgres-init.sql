-- The stack's databases and roles besides MLflow's own store (POSTGRES_DB, made by the postgres
-- image on its first start). Run by the one-shot `postgres-init` service of docker/compose.yaml at
-- every `up`, with psql as POSTGRES_USER (the cluster's superuser); each step only creates what is
-- missing, so a volume made by an older version of the stack gets it too.
--
-- Names and the Optuna password come from the container's environment (\getenv), never from a
-- command line.
\set ON_ERROR_STOP on
\getenv mlflow_db PGDATABASE
\getenv auth_db MLFLOW_AUTH_DB
\getenv optuna_db OPTUNA_DB
\getenv optuna_user OPTUNA_DB_USER
\getenv optuna_password OPTUNA_DB_PASSWORD

-- 1. MLflow's user store: the basic-auth app's users and permissions.
SELECT format('CREATE DATABASE %I', :'auth_db')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'auth_db') \gexec

-- 2. Optuna's studies (search.study_storage): a database of its own, owned by a plain login role
-- that the Ray containers and the Optuna dashboard use. That role is no superuser and cannot read
-- MLflow's databases, so the study storage URL on the Ray nodes opens nothing of MLflow's: MLflow
-- is reached through its server and its permissions only.
SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :'optuna_user' AND rolsuper) AS optuna_user_is_superuser \gset
\if :optuna_user_is_superuser
DO 'BEGIN RAISE EXCEPTION ''OPTUNA_DB_USER names a superuser (POSTGRES_USER?): give Optuna a role of its own''; END';
\endif
SELECT format('CREATE ROLE %I', :'optuna_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'optuna_user') \gexec
-- The password follows docker/.env at every `up` (rotate it there, then `up -d`).
ALTER ROLE :"optuna_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'optuna_password';
SELECT format('CREATE DATABASE %I OWNER %I', :'optuna_db', :'optuna_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'optuna_db') \gexec
ALTER DATABASE :"optuna_db" OWNER TO :"optuna_user";

-- 3. Every role reaches its own database only (PUBLIC may connect to any database by default).
REVOKE ALL ON DATABASE :"optuna_db" FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE :"mlflow_db", :"auth_db" FROM PUBLIC;
