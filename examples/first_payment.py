"""A first Open Payments payment against `make run`, with opay's own small client.

Alice pays Bob 10.00 USD, of which 2.50 already came in another way (a bank transfer
the ASE books with a credit). The steps are the ones every Open Payments app takes:

    grant -> incoming payment -> credit -> quote -> consent -> outgoing payment

Setup (README "Quickstart"): `make run`, create the wallet addresses alice and bob, then
`opay keys new alice`, which prints the three variables this script signs with:

    export OPAY_OPERATOR_TOKEN=...                 # the token `make run` printed
    export CLIENT_WALLET_ADDRESS=http://127.0.0.1:8000/alice KEY_ID=key-... PRIVATE_KEY_FILE=var/keys/alice-key-....pem
    .venv/bin/python examples/first_payment.py

Optional: OPAY_OPERATOR_URL (http://127.0.0.1:8001), RECEIVER_WALLET_ADDRESS (the
client's wallet address with its last segment replaced by bob).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from opay.client import Operator, SignedClient

OPERATOR_URL = os.environ.get("OPAY_OPERATOR_URL", "http://127.0.0.1:8001")


def need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"first_payment: set {name} (see the top of this file)")
    return value


def checked(response: httpx.Response) -> dict:
    """The JSON of a 2xx answer; anything else stops the script with the server's error."""
    if not response.is_success:
        sys.exit(f"first_payment: {response.request.method} {response.request.url} answered {response.status_code}: {response.text}")
    return response.json()


def money(amount: dict) -> str:
    """"1000" at scale 2 is "10.00 USD": amounts are integers in the asset's scale."""
    whole, part = divmod(int(amount["value"]), 10 ** amount["assetScale"])
    return f"{whole}.{part:0{amount['assetScale']}d} {amount['assetCode']}" if amount["assetScale"] else f"{whole} {amount['assetCode']}"


def show(step: str, text: str) -> None:
    print(f"{step:<18} {text}", flush=True)


async def main() -> None:
    key = load_pem_private_key(Path(need("PRIVATE_KEY_FILE")).read_bytes(), password=None)
    async with httpx.AsyncClient(timeout=20) as http:
        # Every request of the app is signed with its key (RFC 9421), as the SDK signs.
        client = SignedClient(http, need("CLIENT_WALLET_ADDRESS"), key, need("KEY_ID"))  # type: ignore[arg-type]
        operator = Operator(http, OPERATOR_URL, need("OPAY_OPERATOR_TOKEN"))

        # Wallet addresses are public documents: they name their auth server and asset.
        sender = checked(await http.get(client.wallet_address))
        bob = client.wallet_address.rsplit("/", 1)[0] + "/bob"
        receiver = checked(await http.get(os.environ.get("RECEIVER_WALLET_ADDRESS", bob)))
        show("wallet addresses", f"{sender['id']} pays {receiver['id']}")

        # 1. grant: a token to create incoming payments at the receiver. Not interactive:
        #    receiving money needs nobody's consent.
        grant = await client.grant(receiver["authServer"], [{"type": "incoming-payment", "actions": ["create", "read"]}])
        incoming_token = grant["access_token"]["value"]
        show("grant", "incoming-payment token issued")

        # 2. incoming payment: Bob expects 10.00 (amounts are integers in the asset's scale).
        amount = {"value": "1000", "assetCode": receiver["assetCode"], "assetScale": receiver["assetScale"]}
        incoming = checked(
            await client.request(
                "POST",
                f"{receiver['resourceServer']}/incoming-payments",
                json={"walletAddress": receiver["id"], "incomingAmount": amount, "metadata": {"description": "first payment"}},
                token=incoming_token,
            )
        )
        show("incoming payment", incoming["id"])

        # 3. credit: 2.50 of it arrives outside Open Payments (say a bank transfer); the ASE
        #    books it through the operator API. The idempotency key makes a retry harmless.
        credit = checked(await operator.credit(incoming["id"], "250", f"bank-transfer-{uuid.uuid4()}"))
        show("credit", f"received {money(credit['receivedAmount'])} of {money(amount)}")

        # 4. quote: what Alice pays for the rest. No amount given: the quote is for what
        #    the incoming payment still expects (7.50), fees included in debitAmount.
        grant = await client.grant(sender["authServer"], [{"type": "quote", "actions": ["create", "read"]}])
        quote = checked(
            await client.request(
                "POST",
                f"{sender['resourceServer']}/quotes",
                json={"walletAddress": sender["id"], "receiver": incoming["id"], "method": "ilp"},
                token=grant["access_token"]["value"],
            )
        )
        show("quote", f"debit {money(quote['debitAmount'])}, receive {money(quote['receiveAmount'])}")

        # 5. consent: spending Alice's money needs her consent, so this grant is interactive.
        pending = checked(
            await client.request(
                "POST",
                sender["authServer"],
                json={
                    "access_token": {
                        "access": [
                            {
                                "type": "outgoing-payment",
                                "actions": ["create", "read"],
                                "identifier": sender["id"],
                                "limits": {"debitAmount": quote["debitAmount"]},
                            }
                        ]
                    },
                    "client": client.wallet_address,
                    "interact": {"start": ["redirect"]},
                },
            )
        )
        show("consent", f"a person would approve at {pending['interact']['redirect']}")
        # A real app sends Alice to that page and waits. This script runs unattended, so the
        # ASE approves in her place through the operator API (what an ASE's own consent app
        # does once she said yes); `make run`'s page decides for logged-in owners only.
        continuation = pending["continue"]
        grant_id = continuation["uri"].rsplit("/", 1)[1]
        checked(await operator.post(f"/grants/{grant_id}/approve", {}))
        # Decided: the next poll of the continue URI gets the access token.
        grant = checked(await client.request("POST", continuation["uri"], token=continuation["access_token"]["value"]))
        outgoing_token = grant["access_token"]["value"]
        show("consent", "approved; outgoing-payment token issued")

        # 6. outgoing payment: pays the quote. With `make run` (OPAY_AUTO_FUND) it is funded
        #    at once, and a receiver on this server is credited within moments.
        created = checked(
            await client.request(
                "POST",
                f"{sender['resourceServer']}/outgoing-payments",
                json={"walletAddress": sender["id"], "quoteId": quote["id"]},
                token=outgoing_token,
            )
        )
        show("outgoing payment", created["id"])
        payment = await until(
            lambda: client.request("GET", created["id"], token=outgoing_token),
            lambda p: p["failed"] or p["sentAmount"]["value"] != "0",
        )
        if payment["failed"]:
            sys.exit(f"first_payment: the payment failed: {payment}")
        received = await until(lambda: client.request("GET", incoming["id"], token=incoming_token), lambda i: i["completed"])
        show("done", f"sent {money(payment['sentAmount'])}; Bob received {money(received['receivedAmount'])} of {money(amount)}")


async def until(read, done, seconds: float = 20):
    """Poll `read` until `done(answer)`: payments settle asynchronously, in moments."""
    for _ in range(int(seconds / 0.2)):
        answer = checked(await read())
        if done(answer):
            return answer
        await asyncio.sleep(0.2)
    sys.exit(f"first_payment: not done after {seconds} s: {answer}")


if __name__ == "__main__":
    asyncio.run(main())
