"""Clients of the hop to an upstream: one HTTP/1.1 client (parsed by llhttp), gRPC channels, header rules."""
