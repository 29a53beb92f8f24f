"""The shopper's cart: one row per product, quantities always positive.

The cart's limits (`MAX_UNITS_PER_LINE` units of one product, `CART_MAX_LINES` products, a total
of at most `MAX_AMOUNT`) are conditions of the one statement that changes a line, never a read
followed by a write: the UPDATE of an existing line or the INSERT ... SELECT ... WHERE of a new
one changes nothing when a limit would be passed. Each change runs in a transaction that first
takes the shopper's lock (`lock_shopper`), so that the statements of one shopper's concurrent
requests see each other's committed lines; a refused change has changed nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

from ordergraph.db import is_postgres, transaction
from ordergraph.db.sql import fetch
from ordergraph.domain.catalog import MAX_AMOUNT
from ordergraph.domain.errors import BusinessError, ErrorCode, Problem
from ordergraph.domain.ids import parse_uuid
from ordergraph.models import CartItem, Product
from ordergraph.settings import Settings

# A line that appeared (or went) between the UPDATE and the INSERT is tried again this often.
_ATTEMPTS = 5

# What the shopper's cart costs now, at today's prices.
_CART_TOTAL = (
    "(SELECT COALESCE(SUM(c.quantity * p.price), 0) FROM cart_items c "
    "JOIN products p ON p.id = c.product_id WHERE c.user_id = ?)"
)


async def lock_shopper(connection: BaseDBAsyncClient, user_id: str) -> None:
    """Serialise, per shopper, the transactions that check a shopper-wide limit.

    A count or a sum in a statement's WHERE is not enough on its own: under PostgreSQL's READ
    COMMITTED two transactions can both count 99 lines, or both sum their unpaid units, and both
    insert. So each such transaction first locks the shopper's `users` row; the second waits at
    this statement until the first commits or rolls back, and its next statement sees what the
    first did. `FOR NO KEY UPDATE` rather than `FOR UPDATE`: it excludes only the other lockers,
    not the `FOR KEY SHARE` lock that a foreign-key check takes when some other transaction
    writes a row pointing at this user (an order's cancellation putting its lines back in the
    cart), so that no transaction outside these waits for it, and none can deadlock with it.

    SQLite has no row locks and one writer at a time; this no-op write (of a column no key
    uses) makes the transaction take that one write lock at its first statement, so it holds
    across processes too (within one, Tortoise runs one transaction at a time on its one
    connection anyway).

    Must be the first statement of the transaction: every locker takes this lock before any
    other, so two lockers never wait on each other in a cycle.
    """
    if is_postgres(connection):
        await fetch(connection, "SELECT id FROM users WHERE id = ? FOR NO KEY UPDATE", user_id)
    else:
        await fetch(
            connection, "UPDATE users SET is_staff = is_staff WHERE id = ? RETURNING id", user_id
        )


# PostgreSQL: the shopper's lock and their cart, as CTEs of a caller's statement (checkout's,
# which reads the shop's offer with them). `shopper`'s lock is taken first (the DELETE's
# one-time filter runs before its scan), then `taken` deletes the cart and holds its rows. A
# cart row that a concurrent cart change committed while this waited for the lock stays in
# the cart. The statement's snapshot is taken before that wait: what it reads besides the cart
# may miss what the lock's previous holder committed.
TAKE_CART = """shopper AS MATERIALIZED (SELECT id FROM users WHERE id = ? FOR NO KEY UPDATE),
taken AS (
    DELETE FROM cart_items WHERE user_id = ? AND (SELECT count(*) FROM shopper) >= 0
    RETURNING id, product_id, quantity
)"""


async def take_cart(connection: BaseDBAsyncClient, user_id: str) -> list[dict[str, Any]]:
    """Lock the shopper (see `lock_shopper`) and claim their cart by deleting it: a second,
    concurrent checkout of the same cart waits for the lock, then finds none. The caller's
    rollback puts the cart back. (On PostgreSQL checkout does this in its own statement, with
    `TAKE_CART`.)"""
    await lock_shopper(connection, user_id)
    return await fetch(
        connection,
        "DELETE FROM cart_items WHERE user_id = ? RETURNING id, product_id, quantity",
        user_id,
    )


def _no_such_product() -> BusinessError:
    return BusinessError.of(ErrorCode.NOT_FOUND, "No such product", field=("productId",))


def _no_longer_sold(product: Product) -> BusinessError:
    """An archived product: NOT_FOUND, as `product(id)` answers null for it to shoppers, but
    named, so that the shopper learns why the line cannot grow."""
    return BusinessError(
        Problem(
            ErrorCode.NOT_FOUND,
            f"{product.name} is no longer sold",
            field=("productId",),
            product_id=str(product.id),
            available=0,
        )
    )


async def _product(product_id: str, *, archived_ok: bool = False) -> Product:
    """The product to put in a cart; an archived one only when `archived_ok` (its line may
    always be removed)."""
    key = parse_uuid(product_id)
    product = await Product.filter(id=key).first() if key else None
    if product is None:
        raise _no_such_product()
    if not product.active and not archived_ok:
        raise _no_longer_sold(product)
    return product


def _line_limit(settings: Settings) -> BusinessError:
    limit = settings.max_units_per_line
    return BusinessError.of(
        ErrorCode.LIMIT_EXCEEDED,
        f"At most {limit} units of one product in a cart",
        field=("quantity",),
    )


async def _update_line(
    connection: BaseDBAsyncClient,
    user_id: str,
    product: Product,
    quantity: int,
    *,
    add: bool,
    settings: Settings,
) -> bool:
    """The existing line becomes `quantity` (or grows by it, `add`), if every limit still holds
    after: units of one product, the product's stock, and the cart's total (unless the line
    shrinks: a cart already past the total can always be made smaller)."""
    new = "cart_items.quantity + ?" if add else "CAST(? AS INTEGER)"
    rows = await fetch(
        connection,
        f"UPDATE cart_items SET quantity = {new} "
        "WHERE user_id = ? AND product_id = ? "
        f"AND {new} <= ? "
        f"AND {new} <= (SELECT stock FROM products WHERE id = ? AND active) "
        f"AND ({new} <= cart_items.quantity OR {_CART_TOTAL} "
        f"+ ({new} - cart_items.quantity) * (SELECT price FROM products WHERE id = ?) "
        "<= CAST(? AS BIGINT)) "
        "RETURNING quantity",
        quantity,
        user_id,
        product.id,
        quantity,
        settings.max_units_per_line,
        quantity,
        product.id,
        quantity,
        user_id,
        quantity,
        product.id,
        MAX_AMOUNT,
    )
    return bool(rows)


async def _insert_line(
    connection: BaseDBAsyncClient,
    user_id: str,
    product: Product,
    quantity: int,
    *,
    settings: Settings,
) -> bool:
    """A new line of `quantity` units, if the cart has room for another product, the stock
    has the units and the cart's total stays within MAX_AMOUNT. A line of this product that
    another request inserted meanwhile (the unique (user, product) key) makes this insert
    nothing; the caller then updates that line instead."""
    rows = await fetch(
        connection,
        "INSERT INTO cart_items (user_id, product_id, quantity, added_at) "
        "SELECT ?, ?, ?, ? "
        "WHERE ? <= (SELECT stock FROM products WHERE id = ? AND active) "
        "AND (SELECT COUNT(*) FROM cart_items WHERE user_id = ?) < ? "
        f"AND {_CART_TOTAL} + ? * (SELECT price FROM products WHERE id = ?) "
        "<= CAST(? AS BIGINT) "
        "ON CONFLICT (user_id, product_id) DO NOTHING "
        "RETURNING quantity",
        user_id,
        product.id,
        quantity,
        datetime.now(UTC),
        quantity,
        product.id,
        user_id,
        settings.cart_max_lines,
        user_id,
        quantity,
        product.id,
        MAX_AMOUNT,
    )
    return bool(rows)


async def _why_refused(
    user_id: str, product_id: str, quantity: int, *, add: bool, settings: Settings
) -> BusinessError | None:
    """Which limit refused the change, read after the statement that refused it (under the
    shopper's lock, so the same rows); None when none did and the change may be tried again."""
    product = await Product.filter(id=product_id).first()
    if product is None:
        return _no_such_product()
    if not product.active:
        return _no_longer_sold(product)
    lines = await CartItem.filter(user_id=user_id).select_related("product")
    current = next((line for line in lines if str(line.product_id) == str(product.id)), None)
    old = current.quantity if current is not None else 0
    new = old + quantity if add else quantity
    if new > settings.max_units_per_line:
        return _line_limit(settings)
    if current is None and len(lines) >= settings.cart_max_lines:
        return BusinessError.of(
            ErrorCode.LIMIT_EXCEEDED,
            f"At most {settings.cart_max_lines} different products in a cart",
            field=("productId",),
        )
    if new > product.stock:
        return BusinessError(
            Problem(
                ErrorCode.OUT_OF_STOCK,
                f"Only {product.stock} of {product.name} left",
                field=("quantity",),
                product_id=str(product.id),
                available=product.stock,
            )
        )
    total = sum(line.quantity * line.product.price for line in lines)
    after = total + (new - old) * product.price
    if new > old and after > MAX_AMOUNT:
        return BusinessError(
            Problem(
                ErrorCode.LIMIT_EXCEEDED,
                f"The cart's total would be {after} minor units; at most {MAX_AMOUNT} can be "
                "paid in one order",
                field=("quantity",),
                product_id=str(product.id),
            )
        )
    return None


async def _put_line(
    user_id: str, product: Product, quantity: int, *, add: bool, settings: Settings
) -> None:
    async with transaction() as connection:
        await lock_shopper(connection, user_id)
        for _ in range(_ATTEMPTS):
            if await _update_line(
                connection, user_id, product, quantity, add=add, settings=settings
            ):
                return
            if await _insert_line(connection, user_id, product, quantity, settings=settings):
                return
            refusal = await _why_refused(
                user_id, str(product.id), quantity, add=add, settings=settings
            )
            if refusal is not None:
                raise refusal
    raise BusinessError.of(
        ErrorCode.LIMIT_EXCEEDED, "The cart is changing too fast; try again", field=("quantity",)
    )


async def add_to_cart(user_id: str, product_id: str, quantity: int, settings: Settings) -> None:
    """Add units to the product's line (a new line if there is none), within the cart's limits."""
    if quantity < 1:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "Quantity must be at least 1", field=("quantity",)
        )
    product = await _product(product_id)
    if quantity > settings.max_units_per_line:
        raise _line_limit(settings)
    await _put_line(user_id, product, quantity, add=True, settings=settings)


async def set_cart_quantity(
    user_id: str, product_id: str, quantity: int, settings: Settings
) -> None:
    """Set the line's quantity, within the cart's limits; 0 removes it (an archived
    product's too)."""
    if quantity < 0:
        raise BusinessError.of(
            ErrorCode.INVALID_INPUT, "Quantity cannot be negative", field=("quantity",)
        )
    product = await _product(product_id, archived_ok=quantity == 0)
    if quantity == 0:
        await CartItem.filter(user_id=user_id, product_id=product.id).delete()
        return
    if quantity > settings.max_units_per_line:
        raise _line_limit(settings)
    await _put_line(user_id, product, quantity, add=False, settings=settings)


async def remove_from_cart(user_id: str, product_id: str) -> None:
    key = parse_uuid(product_id)
    if key is None:
        raise _no_such_product()
    await CartItem.filter(user_id=user_id, product_id=key).delete()


async def cart_lines(user_id: str) -> list[CartItem]:
    return await CartItem.filter(user_id=user_id).select_related("product").order_by("id")
