# busgate: multi-stage build. The runtime image holds only the stripped binary and CA
# certificates and runs as an unprivileged user.
#   docker build -t busgate .
#   docker run -p 8080:8080 -p 9464:9464 busgate
# Dependencies are cached by cargo-chef: its recipe is computed from Cargo.toml and Cargo.lock
# (every target they declare), so the cached layer cannot drift from the manifest.
# tests/docker_build.rs replays the planner and the dependency build of this file.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src
# Release builds here are stripped and carry no debug info (the repo's profile keeps
# debug = 1 for profiling); set for the dependency build and the final build alike.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
# The patched async-nats is a path dependency (vendor/async-nats/PATCHED.md): the dependency
# build compiles it from its sources.
COPY vendor vendor
# The build's flags (tokio_unstable, src/main.rs): the dependencies are built with them too.
COPY .cargo .cargo
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin busgate
COPY . .
RUN cargo build --release --locked --bin busgate

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
