"""HTTP and WebSocket plumbing around the GraphQL app: middleware, WebSocket protocols,
probes and the reference success page. `ordergraph.app` puts them together."""
