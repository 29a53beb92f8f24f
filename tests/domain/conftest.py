"""Fixtures of the domain tests that need a service with other settings than the harness's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ordergraph.stripe_emulator import StripeEmulator
from tests.conftest import Harness, SmtpServer
from tests.utils.shop import taxed_service


@pytest.fixture(scope="module")
async def taxing(
    request: pytest.FixtureRequest,
    harness: Harness,
    database_url: str,
    stripe_server: tuple[StripeEmulator, str],
    smtp: SmtpServer,
) -> AsyncIterator[Harness]:
    """An `ordergraph serve` with AUTOMATIC_TAX=true, one for each test module that asks."""
    name = request.module.__name__.rpartition(".")[2]
    async with taxed_service(harness, database_url, stripe_server, smtp, name) as served:
        yield served


@pytest.fixture
async def taxed(taxing: Harness, app: Harness) -> Harness:
    """The AUTOMATIC_TAX service over an emptied database (the `app` fixture empties it)."""
    return taxing
