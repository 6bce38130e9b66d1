# Build: docker build -t psbroker .   Run: docker run -p 8080:8080 -e PSBROKER_SERVER__LISTEN=0.0.0.0:8080 psbroker
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
RUN cargo build --release --locked --bin psbroker

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/psbroker --create-home psbroker \
 && apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/psbroker /usr/local/bin/psbroker
USER psbroker
WORKDIR /var/lib/psbroker
ENV PSBROKER_STORE__URL=sqlite:///var/lib/psbroker/data/psbroker.db
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/psbroker"]
CMD ["serve"]
