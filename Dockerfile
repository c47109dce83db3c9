# One image for every service of docker-compose.yml (api, worker, relay, beat, flower, migrate).
# Build stage: install leadrelay and its dependencies into a virtualenv (every dependency ships wheels,
# so no compiler is needed); the runtime stage copies only that virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The packages setuptools finds ([tool.setuptools.packages.find] in pyproject.toml); README.md is the readme.
COPY pyproject.toml README.md ./
COPY leadrelay leadrelay
COPY intake intake
COPY rules rules
COPY models models
COPY workers workers
RUN pip install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    LEADRELAY_DATA_DIR=/var/lib/leadrelay
# A system user without a login shell; numeric in USER so an orchestrator can check it is not root.
# /var/lib/leadrelay: the data directory (celery beat's schedule file); /run/prometheus: the API's
# multiprocess metrics (a tmpfs in docker-compose.yml, writable whichever mode the runtime gives it).
RUN groupadd --system --gid 10001 leadrelay \
    && useradd --system --uid 10001 --gid leadrelay --home-dir /var/lib/leadrelay --shell /usr/sbin/nologin leadrelay \
    && install -d -o leadrelay -g leadrelay -m 0750 /var/lib/leadrelay \
    && install -d -o leadrelay -g leadrelay -m 1777 /run/prometheus
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/leadrelay
USER 10001:10001
EXPOSE 8000 5555
CMD ["leadrelay", "api", "--host", "0.0.0.0", "--port", "8000"]
