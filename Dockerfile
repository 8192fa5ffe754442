# Gatewatch: one image for every role of the compose stack (edge, balancer, demo backends, load generator).
#
#   docker build -t gatewatch:0.1.0 .
#   docker run --rm -v $PWD/examples:/etc/gatewatch:ro -p 8080:8080 gatewatch:0.1.0 run -c /etc/gatewatch/gateway.yaml
#
# Slim Debian base, wheels built (hot path compiled) in a throw-away stage (no compiler or pip cache in the
# final image), runs as an unprivileged user. The HEALTHCHECK asks the admin listener's /readyz, which answers
# 200 only once every traffic listener is serving (and 503 while starting or draining); set GATEWATCH_ADMIN_PORT
# when admin.address is not port 9901, and make admin.address listen on an address the container can reach
# (e.g. 0.0.0.0:9901).

FROM python:3.13-slim-trixie AS build
# A C compiler for the compiled hot path (setup.py, docs/compiled.md); the image's Python ships its headers.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gatewatch ./gatewatch
COPY edge ./edge
COPY balancer ./balancer
COPY telemetry ./telemetry
COPY dashboards ./dashboards
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:3.13-slim-trixie
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWATCH_ADMIN_PORT=9901
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels gatewatch \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/gatewatch --create-home gatewatch
USER 10001:10001
WORKDIR /var/lib/gatewatch
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('GATEWATCH_ADMIN_PORT', '9901'), timeout=2)"]
ENTRYPOINT ["gatewatch"]
CMD ["--help"]
