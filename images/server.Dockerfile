# syntax=docker/dockerfile:1.7
# lumie-server for builders with a daemon and a registry:
#   docker build -f images/server.Dockerfile --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/lumie-infra/lumie-server:0.1.0 .
# `make images` builds the same tree without a daemon (scripts/build-images.sh). The final
# stage's COPY lines are images/server.files line for line, and its USER, ENV and ENTRYPOINT are
# images/server.config: tests/tests/images.rs checks both, so the two paths cannot drift.

FROM docker.io/library/rust:1-bookworm AS build
# build-static.sh's tools: the musl targets, and cargo-zigbuild with zig (PyPI) as the C
# cross-compiler and libc for both architectures.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip file ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && pip3 install --break-system-packages cargo-zigbuild ziglang \
 && rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CARGO_TARGET_DIR=/src/target
RUN bash scripts/build-static.sh && mkdir /empty

FROM scratch
ARG REVISION=unknown
COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-amd64/lumie-server /usr/local/bin/lumie-server
COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-amd64/lumie-agent /usr/local/share/lumie-coder/bin/lumie-agent-linux-amd64
COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-arm64/lumie-agent /usr/local/share/lumie-coder/bin/lumie-agent-linux-arm64
COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-amd64/lumie /usr/local/share/lumie-coder/bin/lumie-linux-amd64
COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-arm64/lumie /usr/local/share/lumie-coder/bin/lumie-linux-arm64
COPY --from=build --chmod=0644 --chown=0:0 /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build --chmod=0644 --chown=0:0 /src/images/passwd /etc/passwd
COPY --from=build --chmod=0644 --chown=0:0 /src/images/group /etc/group
COPY --from=build --chmod=1777 --chown=0:0 /empty/ /tmp/
COPY --from=build --chmod=0755 --chown=65532:65532 /empty/ /var/lib/lumie-coder/
USER 65532:65532
ENV PATH=/usr/local/bin
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENV LUMIE_DATA_DIR=/var/lib/lumie-coder
ENV LUMIE_AGENT_BINARY_DIR=/usr/local/share/lumie-coder/bin
ENV LUMIE_LISTEN_ADDR=0.0.0.0:8080
LABEL org.opencontainers.image.source="https://github.com/lumie-infra/lumie-coder" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.title="lumie-server" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/lumie-server"]
