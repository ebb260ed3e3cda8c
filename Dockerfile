# The image every service of docker-compose.yaml runs: Airflow's official image with this provider
# (and its `postgres` extra) installed from the build context. The sandbox service runs it too, with
# the `servicetitan-sandbox` command instead of Airflow.
#
# Official tags are `<airflow version>-python<python version>`; the Python version is explicit so a
# rebuild never changes it behind our back (the provider needs Python >= 3.11).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.12
FROM ${AIRFLOW_IMAGE}

# The simple auth manager's passwords file lives here (the `airflow-auth` volume): created as the
# image's `airflow` user, so the named volume starts owned by it.
RUN mkdir -p /opt/airflow/auth

COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/servicetitan-provider/
COPY --chown=airflow:0 airflow_provider_servicetitan /opt/airflow/servicetitan-provider/airflow_provider_servicetitan

# Pinning apache-airflow to the image's own version (AIRFLOW_VERSION is set by the base image) keeps
# pip from upgrading or downgrading Airflow while it resolves the provider's dependencies.
# apache-airflow-providers-celery runs the `celery` profile's workers and flower (CeleryExecutor,
# celery[redis], flower). The regular official image already ships it, so pip keeps that version;
# named here so that a `slim-` base image, which has no providers, gets it too. Celery 5.7 dropped
# `celery.backends.database.retry`, which the celery provider 3.26 still imports: below 5.7.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        "/opt/airflow/servicetitan-provider[postgres]" \
        "apache-airflow-providers-celery" "celery<5.7"
