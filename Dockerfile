# The MC's image: docker build -t registry.example.com/mc:0.1.0 .
# Two stages: the install (scripts/install.sh, the one place its steps live, with the
# versions of constraints.txt) builds /opt/mc/venv; the final stage is the same slim
# Python with that virtualenv copied in, no compiler, no pip cache, run as a user
# without privileges. deploy/kubernetes/statefulset.yaml runs it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS install
# A compiler for any dependency without a wheel for the build's platform; it stays here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN PYTHON=/usr/local/bin/python3 scripts/install.sh /opt/mc/venv

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 mc \
 && useradd --system --uid 10001 --gid mc --no-create-home --shell /usr/sbin/nologin mc
# The virtualenv's python is a link to this same base image's /usr/local/bin/python3.
COPY --from=install /opt/mc/venv /opt/mc/venv
ENV PATH=/opt/mc/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC (TCP), WebTransport (UDP), /healthz /readyz /metrics (TCP): the defaults.
EXPOSE 50052/tcp 4433/udp 8081/tcp
# No pidfile (after a crash a stale one would name pid 1); logs on stdout.
ENTRYPOINT ["/opt/mc/venv/bin/twistd", "--nodaemon", "--pidfile=", "mc"]
