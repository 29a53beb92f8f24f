"""The GraphQL side of the service: types, context, loaders and one module of resolvers per area.

Resolvers are thin: who may ask, one call into `ordergraph.domain`, then the answer's shape.
`ordergraph.schema` binds them to the contract's root fields.
"""
