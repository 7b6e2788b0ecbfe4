"""FastAPI routers, one per resource: discovery, service calls, feedback, health."""
