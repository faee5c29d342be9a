"""The listeners: HTTP and gRPC proxies over one routing plan, slow-client guards, health."""
