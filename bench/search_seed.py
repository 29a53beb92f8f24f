"""The shop that `bench.search` searches: N orders (1,000,000 by default) made by SQL in
PostgreSQL itself (`generate_series`, no ORM, no rows through Python), with what a year of a
real shop has that a search can trip on.

- 10,000 products named from three word lists ("Classic Linen Shirt"): a word is in about
  1/20 or 1/30 of the names, a whole name in one product;
- 100,000 shoppers, `first.lastNNNN@domain` from 100 first and 100 last names: a
  `first.last` prefix is about 10 shoppers, three letters about 1/50 to 1/100 of them;
- N orders over the last 365 days (created in time order, as a shop's rows are; updated a
  little later), 10 per shopper, 1 to 3 lines each, totals from their lines; statuses as an
  established shop has them: 80% delivered, 7% cancelled, 4% shipped, 2% each awaiting
  shipment, pending, failed, refunded, 1% payment confirmed; paid orders carry Stripe's email,
  an address, a tracking number.

The migrations' indexes are dropped during the load and built again from their own
definitions afterwards (faster than maintaining them row by row, and the same indexes), then
`VACUUM ANALYZE`: the state of a database whose autovacuum has caught up.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

ADJECTIVES = (
    "Classic Vintage Modern Rustic Urban Cozy Bold Slim Giant Tiny Soft Rugged Sleek Bright "
    "Dusky Nordic Alpine Coastal Royal Humble Smart Quiet Swift Lucky Wild Gentle Daily Grand "
    "Pocket Studio"
).split()
MATERIALS = (
    "Linen Cotton Wool Leather Denim Ceramic Bamboo Copper Steel Oak Walnut Glass Silk Canvas "
    "Cork Marble Velvet Hemp Stone Brass"
).split()
NOUNS = (
    "Shirt Mug Kettle Lamp Scarf Backpack Wallet Notebook Bowl Vase Blanket Jacket Apron "
    "Candle Clock Teapot Basket Cushion Tote Beanie Sock Glove Planter Tray Stool Mirror "
    "Bottle Journal Poster Hoodie"
).split()
FIRST = (
    "olivia liam emma noah ava elijah sophia james isabella william mia benjamin charlotte "
    "lucas amelia henry harper alexander evelyn michael abigail daniel emily matthew ella "
    "jackson elizabeth sebastian sofia jack avery aiden scarlett owen grace samuel chloe "
    "joseph victoria john riley david aria wyatt lily carter aubrey julian zoey luke penelope "
    "grayson layla isaac nora jayden hazel theodore aurora gabriel ellie anthony paisley dylan "
    "audrey leo savannah lincoln brooklyn jaxon bella asher claire christopher skylar josiah "
    "lucy andrew anna thomas caroline joshua genesis ezra aaliyah hudson kennedy charles "
    "allison caleb maya isaiah sarah ryan madelyn nathan adeline eli violet aaron"
).split()[:100]
LAST = (
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez "
    "gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white "
    "harris sanchez clark ramirez lewis robinson walker young allen king wright scott torres "
    "nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter roberts "
    "gomez phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales "
    "murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos "
    "kim cox ward richardson watson brooks chavez wood james bennett gray mendoza ruiz hughes "
    "price alvarez castillo sanders patel myers long ross foster jimenez"
).split()[:100]
DOMAINS = ["example.com", "mail.test", "shop.test", "inbox.test"]
PRODUCTS = 10_000
SHOPPERS = 100_000
# (status, payment status, share in thousandths), cumulated below.
STATUSES = [
    ("delivered", "paid", 800),
    ("cancelled", "expired", 70),
    ("shipped", "paid", 40),
    ("awaiting_shipment", "paid", 20),
    ("pending_payment", "pending", 20),
    ("payment_failed", "failed", 20),
    ("refunded", "refunded", 20),
    ("payment_confirmed", "paid", 10),
]
# Indexes that back constraints stay; the rest are rebuilt after the load.
KEEP = {"orders_pkey", "orders_stripe_checkout_session_id_key", "order_items_pkey"}


def _bounds() -> dict[str, tuple[int, int]]:
    """Each status's range of `r` (0..999)."""
    bounds, upto = {}, 0
    for status, _, share in STATUSES:
        bounds[status] = (upto, upto + share)
        upto += share
    return bounds


def _status_case(column: str) -> str:
    """A CASE over `s.r` picking each status (or its payment status) by its share."""
    parts = [
        f"WHEN s.r < {_bounds()[status][1]} THEN '{status if column == 'status' else payment}'"
        for status, payment, _ in STATUSES
    ]
    return "CASE " + " ".join(parts) + " END"


def _among(*statuses: str) -> str:
    """SQL: the order's status is one of these."""
    return (
        "("
        + " OR ".join(f"s.r BETWEEN {_bounds()[x][0]} AND {_bounds()[x][1] - 1}" for x in statuses)
        + ")"
    )


async def seed(conn: asyncpg.Connection, orders: int, log: Any = print) -> dict[str, Any]:
    assert len(FIRST) == len(LAST) == 100, "the email formula takes 100 of each"
    started = time.perf_counter()
    await conn.execute("SET session_replication_role = replica")  # rows are consistent
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute("SET synchronous_commit = off")
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename IN ('orders', 'order_items') AND indexname <> ALL($1::text[])",
        sorted(KEEP),
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    names = len(ADJECTIVES) * len(MATERIALS) * len(NOUNS)
    await conn.execute(
        """INSERT INTO products (id, sku, name, description, price, stock, active, created_at,
                                 updated_at)
        SELECT gen_random_uuid(), 'SKU-' || lpad(n::text, 6, '0'),
               ($1::text[])[1 + i % $4] || ' ' || ($2::text[])[1 + (i / $4) % $5] || ' '
                   || ($3::text[])[1 + i / ($4 * $5)],
               '', 500 + (n % 50) * 100, 1000000000, true, now(), now()
        FROM generate_series(0, $6 - 1) AS n, LATERAL (SELECT (n * 7) % $7 AS i) AS pick""",
        ADJECTIVES,
        MATERIALS,
        NOUNS,
        len(ADJECTIVES),
        len(MATERIALS),
        PRODUCTS,
        names,
    )
    await conn.execute(
        """INSERT INTO users (id, email, is_staff, created_at)
        SELECT 'shopper-' || n,
               ($1::text[])[1 + n % 100] || '.' || ($2::text[])[1 + (n / 100) % 100]
                   || (n / 10000)::text || lpad((n % 997)::text, 3, '0') || '@'
                   || ($3::text[])[1 + n % 4],
               false, now()
        FROM generate_series(0, $4 - 1) AS n""",
        FIRST,
        LAST,
        DOMAINS,
        SHOPPERS,
    )
    log(f"    products and {SHOPPERS:,} shoppers in {time.perf_counter() - started:.0f} s")
    await conn.execute(
        """CREATE TEMP TABLE seed AS
        SELECT n, gen_random_uuid() AS id, 'shopper-' || ((n * 7919) % $2) AS user_id,
               now() - interval '365 days' + (n * interval '365 days') / $1 AS created,
               ((n * 2654435761) % 1000)::int AS r
        FROM generate_series(0::bigint, $1::bigint - 1) AS n""",
        orders,
        SHOPPERS,
    )
    await conn.execute(
        "CREATE TEMP TABLE catalogue AS SELECT row_number() OVER (ORDER BY sku) - 1 AS num,"
        " id, name, price FROM products"
    )
    await conn.execute("CREATE UNIQUE INDEX ON catalogue (num)")
    await conn.execute(
        """INSERT INTO order_items (order_id, product_id, product_name, unit_price, quantity,
                                    quantity_refunded, quantity_restocked, quantity_returning)
        SELECT s.id, p.id, p.name, p.price, 1 + (s.n + k) % 3, 0, 0, 0
        FROM seed s CROSS JOIN LATERAL generate_series(1, 1 + s.n % 3) AS k
        JOIN catalogue p ON p.num = (s.n * 31 + k * 7877) % $1""",
        PRODUCTS,
    )
    lines = await conn.fetchval("SELECT count(*) FROM order_items")
    log(f"    {lines:,} order lines in {time.perf_counter() - started:.0f} s")
    paid = _among("delivered", "shipped", "awaiting_shipment", "payment_confirmed", "refunded")
    sent = _among("delivered", "shipped")
    await conn.execute(
        f"""INSERT INTO orders (id, user_id, status, payment_status, version, currency,
               subtotal, discount, shipping_cost, tax, total, amount_refunded,
               shipping_address, carrier, tracking_number, is_locked, stripe_payment_intent_id,
               customer_email, email, expires_at, paid_at, created_at, updated_at)
        SELECT s.id, s.user_id, {_status_case("status")}, {_status_case("payment")},
               3, 'USD', t.sub, 0, 495, t.sub * 8 / 100, t.sub + 495 + t.sub * 8 / 100,
               CASE WHEN {_among("refunded")} THEN t.sub + 495 + t.sub * 8 / 100 ELSE 0 END,
               CASE WHEN {paid} THEN jsonb_build_object('name', u.email, 'line1', '1 Main St',
                    'city', 'Springfield', 'postal_code', '12345',
                    'country', (ARRAY['US', 'DE', 'FR', 'GB'])[1 + s.n % 4]) END,
               CASE WHEN {sent} THEN 'UPS' END,
               CASE WHEN {sent} THEN '1Z' || lpad(s.n::text, 12, '0') END,
               {paid}, CASE WHEN {paid} THEN 'pi_bench_' || s.n END,
               CASE WHEN {paid} THEN u.email END, u.email,
               s.created + interval '30 minutes', CASE WHEN {paid} THEN s.created END,
               s.created, s.created + (s.r * interval '1 minute')
        FROM seed s
        JOIN (SELECT order_id, sum(unit_price * quantity) AS sub FROM order_items
              GROUP BY order_id) AS t ON t.order_id = s.id
        JOIN users u ON u.id = s.user_id"""
    )
    log(f"    {orders:,} orders in {time.perf_counter() - started:.0f} s")
    await conn.execute("DROP TABLE seed")
    await conn.execute("DROP TABLE catalogue")
    for index in indexes:
        await conn.execute(index["indexdef"])
    log(f"    {len(indexes)} indexes built in {time.perf_counter() - started:.0f} s")
    await conn.execute("SET session_replication_role = DEFAULT")
    await conn.execute("VACUUM ANALYZE")
    sizes = await conn.fetch(
        "SELECT relname, pg_total_relation_size(oid) AS bytes FROM pg_class"
        " WHERE relname IN ('orders', 'order_items')"
    )
    return {
        "orders": await conn.fetchval("SELECT count(*) FROM orders"),
        "lines": lines,
        "seconds": time.perf_counter() - started,
        "indexes": [i["indexname"] for i in indexes],
        "bytes": {r["relname"]: r["bytes"] for r in sizes},
    }
