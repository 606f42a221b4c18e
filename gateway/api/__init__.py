"""The HTTP API: wire schemas, routes, the app factory and its lifespan."""
