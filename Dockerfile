# busgate: multi-stage build. The runtime image holds only the binary and CA certificates and
# runs as an unprivileged user.
#   docker build -t busgate .
#   docker run -p 8080:8080 -p 9464:9464 busgate
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/telemetry.rs \
    && cargo build --release --locked --bin busgate \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin busgate

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --create-home busgate
COPY --from=build /src/target/release/busgate /usr/local/bin/busgate
USER busgate
WORKDIR /app
# HTTP ingress and the admin listener (/metrics, /healthz, /readyz).
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["busgate", "probe", "http://127.0.0.1:9464/readyz"]
ENTRYPOINT ["busgate"]
