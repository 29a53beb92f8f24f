"""`ordergraph demo`: a whole purchase on a fresh machine's defaults, run twice, and a failed
step that ends the run with a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys

LIVE = (
    "5 messages: PENDING_PAYMENT -> PAYMENT_CONFIRMED -> AWAITING_SHIPMENT -> SHIPPED -> DELIVERED"
)


def demo(*python: str) -> subprocess.CompletedProcess[str]:
    """The command as a person runs it, with nothing of the test's environment that it reads."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DATABASE_", "STRIPE_", "SMTP_", "JWT_", "EVENTS_"))
    }
    command = (
        [sys.executable, "-c", *python]
        if python
        else [sys.executable, "-m", "ordergraph.cli", "demo"]
    )
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_demo_completes_a_purchase_and_a_second_run_works_too() -> None:
    orders = []
    for _ in range(2):
        done = demo()
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "demo passed: 22 steps" in out, out
        assert LIVE in out
        assert re.search(
            r"mail +4 received: Your receipt for order \w+; .* is being packed; "
            r".* has shipped; .* was delivered",
            out,
        ), out
        assert re.search(r"live: payment confirmed: [\d.]+ ms after the payment", out)
        assert "Traceback" not in done.stderr
        order = re.search(r"order +([0-9a-f-]{36}): DELIVERED/PAID", out)
        assert order, out
        orders.append(order.group(1))
        # The guest's purchase: Express (15.00), DEMO20 (20 % off), taxed in Germany (19 %).
        charged = re.search(r"charged ([\d.]+) USD", out)
        assert charged, out
        total = charged.group(1)
        assert re.search(
            r"guest: receipt read from the SMTP sink: to guest@example\.com: "
            r"Subtotal: ([\d.]+) USD; Discount \(DEMO20\): -[\d.]+ USD; "
            rf"Shipping \(Express\): 15\.00 USD; Tax: [\d.]+ USD; Total paid: {total} USD",
            out,
        ), out
        assert re.search(
            r"read the order with the receipt's access token: no bearer token; "
            rf"subtotal [\d.]+ USD, .*total {total} USD",
            out,
        ), out
        guest = re.search(
            r"guest order +([0-9a-f-]{36}): PAYMENT_CONFIRMED/PARTIALLY_REFUNDED, guest@", out
        )
        assert guest, out
        money = re.search(
            r"guest money +subtotal ([\d.]+) USD, discount \(DEMO20\) -([\d.]+) USD, "
            r"shipping \(Express\) 15\.00 USD, tax ([\d.]+) USD, total ([\d.]+) USD; "
            rf"Stripe charged {total} USD",
            out,
        )
        assert money, out
        subtotal, discount, tax, paid = (round(float(x) * 100) for x in money.groups())
        assert discount == round(subtotal * 0.20)  # 20 % off the lines
        assert tax == round((subtotal - discount) * 0.19) + round(1500 * 0.19)  # DE, 19 %
        assert paid == subtotal - discount + 1500 + tax
        # One unit of two withdrawn before shipping: half of what was charged less shipping.
        withdrawn = re.search(r"withdrawal +1 unit, ([\d.]+) USD refunded", out)
        assert withdrawn, out
        assert round(float(withdrawn.group(1)) * 100) == (paid - 1500) // 2
    assert orders[0] != orders[1]


def test_a_failing_step_stops_the_demo_with_a_non_zero_exit() -> None:
    done = demo(
        "import ordergraph.demo.purchase as d; "
        "d.CHECKOUT = 'mutation { checkout { orderId noSuchField } }'; "
        "from ordergraph.cli import main; main(['demo'])"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "checkout: FAILED" in done.stdout
    assert "demo FAILED" in done.stderr and "step 5 (checkout)" in done.stderr
    assert "noSuchField" in done.stderr
    assert "demo passed" not in done.stdout


def test_a_stack_that_cannot_start_is_a_failed_step_not_a_traceback() -> None:
    done = demo(
        "import ordergraph.demo.purchase as d\n"
        "async def broken(settings): raise RuntimeError('disk full')\n"
        "d.seed_catalogue = broken\n"
        "from ordergraph.cli import main; main(['demo'])"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "step 0 (start the stack): RuntimeError: disk full" in done.stderr
    assert "Traceback" not in done.stderr
