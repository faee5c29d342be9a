"""Clients of the hop to an upstream: HTTP/1.1 keep-alive pools and gRPC channels, and the hop's header rules."""
