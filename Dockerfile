# The host agent in a container (seed 000's "Docker" section):
#   docker build -t vmfleet-agent .
#   docker run --privileged --device /dev/kvm -p 127.0.0.1:3030:3030 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -e API_URL=https://cp.example.net -e HOST_API_KEY=... vmfleet-agent
# --privileged (or CAP_NET_ADMIN and /dev/net/tun) lets it make TAP devices for its VMs; the
# Docker socket lets it run rentals' containers on the host's engine.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin vmfleet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-system-x86 iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/vmfleet /usr/local/bin/vmfleet
ENV API_URL=http://localhost:8080 \
    VM_BASE_PATH=/var/lib/vmfleet/vms \
    LOG_LEVEL=info \
    NODE_WS_LISTEN=0.0.0.0:3030
VOLUME /var/lib/vmfleet
EXPOSE 3030
ENTRYPOINT ["vmfleet", "agent"]
