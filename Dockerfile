# Build: docker build -t psbroker .
# Run with TLS (certificate and key mounted read-only):
#   docker run -p 8443:8443 -v /etc/psbroker/tls:/tls:ro -e PSBROKER_SERVER__LISTEN=0.0.0.0:8443 \
#     -e PSBROKER_SERVER__TLS__CERT_FILE=/tls/cert.pem -e PSBROKER_SERVER__TLS__KEY_FILE=/tls/key.pem psbroker
# or without TLS, published on the host's loopback only (or behind a TLS proxy):
#   docker run -p 127.0.0.1:8080:8080 -e PSBROKER_SERVER__LISTEN=0.0.0.0:8080 \
#     -e PSBROKER_SERVER__ALLOW_INSECURE_NON_LOOPBACK=true psbroker
# Inside the container the daemon must listen on 0.0.0.0, which it refuses without TLS or the
# override. The admin token is in the container: docker exec <id> cat /var/lib/psbroker/data/api-token
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
RUN cargo build --release --locked --bin psbroker

FROM debian:bookworm-slim
# A numeric user, so Kubernetes can verify runAsNonRoot (deploy/k8s/deployment.yaml runs as the
# same 10001). The data directory is the only place the daemon writes.
RUN groupadd --system --gid 10001 psbroker \
 && useradd --system --uid 10001 --gid 10001 --home /var/lib/psbroker --create-home psbroker \
 && install -d -o 10001 -g 10001 /var/lib/psbroker/data \
 && apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/psbroker /usr/local/bin/psbroker
USER 10001:10001
WORKDIR /var/lib/psbroker
ENV PSBROKER_STORE__URL=sqlite:///var/lib/psbroker/data/psbroker.db
EXPOSE 8080
# The image has no curl: the binary asks itself (GET /healthz on the configured port, through
# loopback; HTTPS when [server.tls] is set).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/psbroker", "health"]
ENTRYPOINT ["/usr/local/bin/psbroker"]
CMD ["serve"]
