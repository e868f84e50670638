# One image for both services (and the fetch init-container): static-ish Rust binaries on a
# distroless base, running as non-root.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p staging-server -p shuffle-service

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/staging-server /usr/local/bin/staging-server
COPY --from=build /src/target/release/shuffle-service /usr/local/bin/shuffle-service
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/staging-server"]
