"""The incoming payment lifecycle through the public API, against a real server."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_create_credit_complete(world) -> None:
    token = await world.token()
    created = await world.create_payment(token, incomingAmount={"value": "100", "assetCode": "USD", "assetScale": 2})
    assert created.status_code == 201, created.text
    payment = created.json()
    assert payment["receivedAmount"]["value"] == "0" and payment["completed"] is False
    [method] = payment["methods"]
    assert method["type"] == "ilp" and method["ilpAddress"].startswith("test.opay.")

    accepted = await world.operator.credit(payment["id"], "100", "first")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["completed"] is True

    fetched = await world.client.request("GET", payment["id"], token=token)
    assert fetched.status_code == 200
    assert fetched.json()["receivedAmount"]["value"] == "100"
    assert fetched.json()["methods"] == []
