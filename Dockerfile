# wsroute: one image holding both wsroute-server (entrypoint) and router-cli.
#
#   docker build -t wsroute:dev .
#   docker run --rm wsroute:dev --help
#   docker run --rm --entrypoint router-cli wsroute:dev --help

# ---- builder ---------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole workspace is needed: Cargo resolves every member listed in the root
# manifest (core/, which both binaries build on, and tests/ included) even when
# building only two packages. No protoc:
# proto/build.rs compiles the .proto with protox (pure Rust).
COPY . .

# --locked: build exactly what Cargo.lock pins, fail instead of re-resolving.
RUN cargo build --release --locked -p wsroute-server -p router-cli \
 && install -Dm755 target/release/wsroute-server target/release/router-cli -t /out/

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for rediss:// URLs; curl for container health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Fixed UID so volume permissions and PodSecurity rules are predictable.
RUN groupadd --system --gid 10001 wsroute \
 && useradd --system --uid 10001 --gid wsroute --no-create-home --shell /usr/sbin/nologin wsroute

COPY --from=builder /out/wsroute-server /out/router-cli /usr/local/bin/

USER wsroute:wsroute

# 8080: HTTP + WebSocket (/ws, /readyz, /metrics, /v1/...); 50051: gRPC (mesh + Router API).
EXPOSE 8080 50051

# Ready means registered in Redis and accepting clients; a draining node turns
# unhealthy on purpose so orchestrators stop routing to it.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://localhost:8080/readyz || exit 1

# The server is PID 1 and handles SIGTERM itself (graceful drain, then exit 0);
# give it time to finish: about the drain grace (--drain-grace-ms, 20 s) plus
# 17 s (e.g. `docker stop -t 45`, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsroute-server"]
