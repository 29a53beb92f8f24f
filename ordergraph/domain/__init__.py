"""The rules of the shop, shared by the GraphQL resolvers, the Stripe webhook and the CLI.

Domain code knows nothing of GraphQL or HTTP: it takes plain values, raises `BusinessError`
for a refusal, and changes an order's status only through `order_state.change_order`.
"""
