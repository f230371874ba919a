# The modelcar runtime image: `modelcar`, `modelcar-cache` and `modelcar-api` on PATH.
#
#   docker build -t modelcar .                        # everything (modelcar[all])
#   docker build --target cache -t modelcar-cache .   # the node daemon: modelcar[cache] only
#   docker build --target api -t modelcar-api .       # the catalog API: modelcar[api,postgres]
#   make image                                        # without Docker or a public registry:
#                                                     # a Debian base from mmdebstrap, podman,
#                                                     # wheels built on the host (dist/wheels)
#
# With dist/wheels present (make image), the build installs from it and nothing else;
# otherwise from the package index. The final stages hold a venv and nothing to build
# with, run as 65532:65532 (the chart's uid), and start under dumb-init, which forwards
# SIGTERM to the command and reaps children.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build-base
# Debian's ECR credential helper, for registryAuth credHelpers with the node's or the
# service account's AWS role (make image's base already has it: no network then)
RUN command -v docker-credential-ecr-login >/dev/null || (apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends amazon-ecr-credential-helper \
      && rm -rf /var/lib/apt/lists/*)

# One venv per role, installed from the build context mounted for that step only (the
# source never becomes a layer): from dist/wheels when present, else from the index.
FROM build-base AS build-all
RUN --mount=type=bind,target=/src,rw set -e; python3 -m venv /opt/modelcar; \
    if ls /src/dist/wheels/*.whl >/dev/null 2>&1; then \
      /opt/modelcar/bin/pip install -q --no-index --find-links /src/dist/wheels "modelcar[all]" dumb-init; \
    else /opt/modelcar/bin/pip install -q "/src[all]" dumb-init; fi

FROM build-base AS build-cache
RUN --mount=type=bind,target=/src,rw set -e; python3 -m venv /opt/modelcar; \
    if ls /src/dist/wheels/*.whl >/dev/null 2>&1; then \
      /opt/modelcar/bin/pip install -q --no-index --find-links /src/dist/wheels "modelcar[cache]" dumb-init; \
    else /opt/modelcar/bin/pip install -q "/src[cache]" dumb-init; fi

FROM build-base AS build-api
RUN --mount=type=bind,target=/src,rw set -e; python3 -m venv /opt/modelcar; \
    if ls /src/dist/wheels/*.whl >/dev/null 2>&1; then \
      /opt/modelcar/bin/pip install -q --no-index --find-links /src/dist/wheels "modelcar[api,postgres]" dumb-init; \
    else /opt/modelcar/bin/pip install -q "/src[api,postgres]" dumb-init; fi

FROM ${BASE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
# where the source is published (make image: the git remote, when it is a URL)
ARG SOURCE=unknown
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.title="modelcar"
ENV PATH=/opt/modelcar/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MODELCAR_REVISION=${REVISION} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
ENTRYPOINT ["/opt/modelcar/bin/dumb-init", "--"]
CMD ["modelcar", "--help"]

FROM runtime AS cache
COPY --from=build-cache /opt/modelcar /opt/modelcar
COPY --from=build-base /usr/bin/docker-credential-ecr-login /usr/bin/docker-credential-ecr-login

FROM runtime AS api
COPY --from=build-api /opt/modelcar /opt/modelcar

FROM runtime AS all
COPY --from=build-all /opt/modelcar /opt/modelcar
COPY --from=build-base /usr/bin/docker-credential-ecr-login /usr/bin/docker-credential-ecr-login
