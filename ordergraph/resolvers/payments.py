"""Staff looking at where Stripe and the service disagreed, and what was done about it."""

from __future__ import annotations

from ordergraph.domain.discrepancies import list_discrepancies
from ordergraph.resolvers.base import page_size, require_staff
from ordergraph.resolvers.context import Info
from ordergraph.resolvers.staff_types import PaymentDiscrepancy


async def payment_discrepancies(
    info: Info, unresolved_only: bool | None = True, first: int | None = 50
) -> list[PaymentDiscrepancy]:
    await require_staff(info)
    rows = await list_discrepancies(
        unresolved_only=unresolved_only is not False, limit=page_size(first, 50)
    )
    return [PaymentDiscrepancy.from_model(row) for row in rows]
