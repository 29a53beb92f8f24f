"""ordergraph: a GraphQL order and payment service for online shops."""

__version__ = "0.1.0"
