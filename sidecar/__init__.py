"""The traffic-mirroring sidecar (see the README); the proxy itself arrives with its issue."""
