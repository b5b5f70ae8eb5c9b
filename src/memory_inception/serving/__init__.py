"""The OpenAI-compatible HTTP server: schemas, routes, limits, bank store, sessions and its engines."""
