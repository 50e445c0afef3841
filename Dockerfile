# Herald container image.
#   docker build -t herald .
#   docker run --rm -p 8080:8080 herald            (uses config/herald.docker.toml)
#   docker run --rm -p 8080:8080 -v $PWD/my.toml:/etc/herald/herald.toml herald

# ---- build ------------------------------------------------------------------
# rdkafka bundles librdkafka and builds it with its own configure + make + gcc,
# all of which the rust image already has; cmake is only a safety net.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: cargo loads bench/ (herald-bench, a member) to
# resolve it, but builds only herald and herald's dependencies.
COPY . .
RUN cargo build --release --locked -p herald --bin herald \
 && strip target/release/herald

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY config/herald.docker.toml /etc/herald/herald.toml
USER herald
EXPOSE 8080
ENTRYPOINT ["herald"]
CMD ["serve", "--config", "/etc/herald/herald.toml"]
