"""The ASE's own Open Payments client identity: how this server signs when it is a client.

Reading a receiver on another Open Payments server takes a grant at that server's
authorization server, and a grant request names its client by a wallet address whose
jwks.json holds the key the request is signed with (as Rafiki does with its
WALLET_ADDRESS_URL and KEY_ID). Here that wallet address is one of this server's own,
`OPAY_CLIENT_WALLET_ADDRESS` (default path `ase`), created at start if missing; its key is
an Ed25519 key generated once and kept in Redis, and published among the wallet's keys, so
every other server can verify what this one signs.

Why the private key may live in Redis: Redis already holds what matters more, the STREAM
secret every incoming payment's shared secret derives from, every grant and token, every
balance; whoever can read it owns this server already. This key only authenticates the ASE
as a *client* of other ASEs (read grants on incoming payments it is asked to pay); it moves
no money, since money moves over ILP peer links with their own tokens. Keeping it in Redis,
written once with SET NX, is what lets every front end and every restart sign with the same
key without an operator step. An operator with an HSM (or a cloud KMS) would instead keep
the key there, never exporting it: generate it in the HSM, add its public JWK to this
wallet address through the operator API (POST /wallet-addresses/{path}/keys), and give
RequestSigner an object whose `sign(data) -> bytes` asks the HSM (signatures.sign only calls
`private_key.sign`), instead of `load_or_create_key` below. Rotation is the same in both
cases: add the new key under its own kid, sign with it, then revoke the old kid.
"""

from __future__ import annotations

import hashlib
import os

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from opay import base64url
from opay.client import RequestSigner
from opay.clock import now_ms
from opay.domain.amounts import Asset
from opay.http import urls
from opay.persistence import keys
from opay.persistence.wallet_addresses import Jwk, WalletAddress, WalletAddressStore
from opay.settings import Settings

KEY_BYTES = 32


def thumbprint_kid(public_raw: bytes) -> str:
    """The key's RFC 7638 JWK thumbprint: a kid every front end derives alike from the key."""
    canonical = b'{"crv":"Ed25519","kty":"OKP","x":"' + base64url.encode(public_raw).encode() + b'"}'
    return base64url.encode(hashlib.sha256(canonical).digest())


def public_jwk(private_key: Ed25519PrivateKey) -> Jwk:
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Jwk(kid=thumbprint_kid(raw), alg="EdDSA", kty="OKP", crv="Ed25519", x=base64url.encode(raw))


async def load_or_create_key(client: aioredis.Redis) -> Ed25519PrivateKey:
    """The one key of this deployment: the first process to start writes it (SET NX), every
    other process and every restart reads that same key back."""
    await client.set(keys.CLIENT_KEY, os.urandom(KEY_BYTES), nx=True)
    raw = await client.get(keys.CLIENT_KEY)
    if raw is None or len(raw) != KEY_BYTES:
        raise ValueError(f"{keys.CLIENT_KEY} must hold a {KEY_BYTES}-byte Ed25519 private key")
    return Ed25519PrivateKey.from_private_bytes(raw)


async def ensure_client_identity(
    settings: Settings, client: aioredis.Redis, wallets: WalletAddressStore
) -> RequestSigner:
    """The ASE's signer, once its wallet address exists and its jwks.json publishes the key;
    idempotent, so every front end may run it at every start."""
    path = settings.client_wallet_address
    private_key = await load_or_create_key(client)
    jwk = public_jwk(private_key)
    if await wallets.get(path) is None:
        # It holds no money: its asset is the ILP link's, for a wallet address must have one.
        await wallets.create(
            WalletAddress(
                path=path,
                asset=Asset(settings.ilp_asset_code, settings.ilp_asset_scale),
                public_name="Account servicing entity (Open Payments client)",
                created_at_ms=now_ms(),
            )
        )  # False when another front end created it meanwhile: as good
    published = {key.kid: key for key in await wallets.keys_of(path)}
    if published.get(jwk.kid) != jwk:
        if jwk.kid in published:  # another key under our kid (an operator's mistake): ours wins
            await wallets.revoke_key(path, jwk.kid)
        await wallets.add_key(path, jwk)
    return RequestSigner(urls.wallet_address(settings.public_url, path), private_key, jwk.kid)
