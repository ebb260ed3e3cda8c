#!/usr/bin/env bash
# Run once by the postgres image, on an empty data volume (/docker-entrypoint-initdb.d): the image
# itself creates the Airflow metadata database (POSTGRES_DB, owned by POSTGRES_USER); this adds the
# ServiceTitan warehouse, a database of its own owned by a role of its own, so the tasks that write
# the warehouse cannot touch Airflow's metadata. Names and password come from the environment and
# reach SQL as psql variables (quoted by psql), never pasted into the SQL text. The image sources a
# script that is not executable, so no `set -u` here: it would outlive the script.
set -eo pipefail
: "${WAREHOUSE_USER:?}" "${WAREHOUSE_PASSWORD:?}" "${WAREHOUSE_DB:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v warehouse_user="$WAREHOUSE_USER" \
    -v warehouse_password="$WAREHOUSE_PASSWORD" \
    -v warehouse_db="$WAREHOUSE_DB" <<'SQL'
CREATE ROLE :"warehouse_user" LOGIN PASSWORD :'warehouse_password';
CREATE DATABASE :"warehouse_db" OWNER :"warehouse_user";
REVOKE ALL ON DATABASE :"warehouse_db" FROM PUBLIC;
SQL
