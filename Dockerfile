# pgguard's image: the static binary and a CA bundle (so that
# sslmode=verify-full to Neon works), FROM scratch, as a non-root user.
#
#   docker build -t pgguard .       compiles pgguard in the build stage
#   make image-prebuilt             the same final stage around bin/pgguard and
#                                   this machine's CA bundle: no image to pull
#
# It runs `pgguard` configured by the environment (NEON_DATABASE_URL, ...;
# see config.example.toml) or by a file mounted at $PGGUARD_CONFIG, serving
# clients on 6432 and /metrics, /readyz, /status on 9187. Apps that run it as
# a wrapper (`pgguard run -- APP`) copy /usr/local/bin/pgguard into their own
# image: see deploy/fly/README.md.

ARG GO_VERSION=1.26

# The final stage's settings, shared by both ways of filling it.
FROM scratch AS runtime
ENV PGGUARD_LISTEN=0.0.0.0:6432 \
    PGGUARD_HTTP_LISTEN=0.0.0.0:9187
# nobody-like; nothing in the image is writable to it, nothing needs to be.
USER 65532:65532
EXPOSE 6432 9187
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/pgguard", "health"]
ENTRYPOINT ["/usr/local/bin/pgguard"]

# The final stage around a binary built beforehand (`make build`) and the
# CA bundle in bin/ca-certificates.crt of the build context.
FROM runtime AS prebuilt
COPY bin/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY bin/pgguard /usr/local/bin/pgguard

# Build stage: `make build` (cgo with libpg_query, linked statically against
# glibc) in Debian's Go image, which has gcc, libc6-dev, make and the CA
# bundle.
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=0.1.0-dev
ARG COMMIT=
RUN make build VERSION="${VERSION}" COMMIT="${COMMIT}"

# The default target.
FROM runtime
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/bin/pgguard /usr/local/bin/pgguard
