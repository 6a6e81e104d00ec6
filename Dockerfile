# syntax=docker/dockerfile:1
# glance-sidecar in a container: a static Go binary on Debian 12 slim with qemu-img (for
# conversions) and the CA certificates, run as an unprivileged user.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t glance-sidecar .
#   docker run --stop-timeout 90 -v /etc/glance-sidecar:/etc/glance-sidecar:ro \
#       -v glance-sidecar-work:/var/lib/glance-sidecar glance-sidecar
#
# The configuration is mounted at /etc/glance-sidecar/glance-sidecar.conf (readable by uid 10001);
# set [workspace] dir to /var/lib/glance-sidecar. [webhook] listen defaults to 127.0.0.1:9494:
# set it to 0.0.0.0:9494 for the webhook, /healthz, /readyz and /metrics to be reached from
# outside the container (probes, Prometheus). On SIGTERM the sidecar finishes the jobs in flight
# (up to shutdown_timeout, 30 s, plus the HTTP server's 10 s): give it more than docker's default
# 10 s (--stop-timeout, Kubernetes' terminationGracePeriodSeconds).

ARG GO_VERSION=1.26
ARG DEBIAN_VERSION=bookworm

FROM golang:${GO_VERSION}-${DEBIAN_VERSION} AS build
WORKDIR /src
# Modules first: this layer and the module cache survive source changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/glance-sidecar ./cmd/glance-sidecar

FROM debian:${DEBIAN_VERSION}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates qemu-utils \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 glance-sidecar \
    && useradd --system --uid 10001 --gid glance-sidecar --home-dir /var/lib/glance-sidecar \
        --create-home --shell /usr/sbin/nologin glance-sidecar \
    && chmod 0750 /var/lib/glance-sidecar
COPY --from=build /out/glance-sidecar /usr/local/bin/glance-sidecar
USER 10001:10001
WORKDIR /var/lib/glance-sidecar
VOLUME ["/var/lib/glance-sidecar"]
EXPOSE 9494
ENTRYPOINT ["glance-sidecar"]
CMD ["serve", "--config-file", "/etc/glance-sidecar/glance-sidecar.conf"]
