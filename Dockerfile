# syntax=docker/dockerfile:1
# Frontdesk's image: the wheel is built the way CI builds it (scripts/smoke_installed.py, run by
# .ci/run: `python -m build`, the sdist and the wheel from it), then installed into a fresh venv
# of a slim runtime stage that holds no source tree and runs as a non-root user.
#
#   docker build -t frontdesk .
#   docker run -p 8000:8000 --env-file .env frontdesk        (or: docker compose up)

# ---- build: the sdist, and the wheel from it --------------------------------------------------
FROM python:3.12-slim AS build
WORKDIR /src
RUN python -m pip install --quiet --disable-pip-version-check "build>=1.2"
COPY . .
RUN python -m build --outdir /dist .

# ---- runtime: the wheel in a venv, no compiler, no source ---------------------------------------
FROM python:3.12-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/frontdesk/bin:$PATH \
    FRONTDESK_PORT=8000 \
    FRONTDESK_WORKERS=1
RUN groupadd --system --gid 10001 frontdesk \
    && useradd --system --uid 10001 --gid frontdesk --home-dir /var/lib/frontdesk \
       --create-home --shell /usr/sbin/nologin frontdesk
COPY --from=build /dist/*.whl /dist/
# The postgres extra brings psycopg, the driver of postgresql:// URLs (compose.yaml uses one).
RUN python -m venv /opt/frontdesk \
    && /opt/frontdesk/bin/python -m pip install --quiet --disable-pip-version-check \
       "$(ls /dist/frontdesk-*.whl)[postgres]" \
    && rm -rf /dist
# The working directory is the default SQLite file's and `.env`'s (none is baked in).
WORKDIR /var/lib/frontdesk
USER 10001:10001
EXPOSE 8000
# /healthz answers while the process serves (/readyz is for load balancers: it turns 503 while
# the server drains on SIGTERM). urllib raises on a refusal or an error status: exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FRONTDESK_PORT', '8000') + '/healthz', timeout=4)"]
# `frontdesk serve` starts FRONTDESK_WORKERS worker processes; on SIGTERM (docker stop) it
# drains for up to FRONTDESK_SHUTDOWN_GRACE_SECONDS (give `docker stop -t` more than that).
CMD ["frontdesk", "serve", "--host", "0.0.0.0"]
