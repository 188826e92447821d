"""gRPC adapters: containerd v1 API messages in, core calls, messages out.

Services stay thin: they decode requests, call domain code off the event loop
where it blocks, and encode responses. Errors are mapped in one place, the
interceptor in ``berth.services.server``.
"""
