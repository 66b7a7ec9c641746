"""Wallet address server: GET {wa} and GET {wa}/jwks.json. No authentication."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opay.http import wire
from opay.http.errors import ApiError
from opay.http.services import Services, services
from opay.persistence.wallet_addresses import WalletAddress


def document(s: Services, wallet: WalletAddress) -> dict:
    view: dict = {"id": s.wallet_url(wallet.path)}
    if wallet.public_name is not None:
        view["publicName"] = wallet.public_name
    view["assetCode"] = wallet.asset.code
    view["assetScale"] = wallet.asset.scale
    view["authServer"] = s.settings.auth_server_url
    view["resourceServer"] = s.settings.resource_server_url
    return view


async def _known(request: Request) -> tuple[Services, WalletAddress]:
    s = services(request)
    wallet = await s.wallet(request.path_params["path"])
    if wallet is None:
        raise ApiError(404, "not_found", "no such wallet address")
    return s, wallet


async def get_wallet_address(request: Request) -> Response:
    s, wallet = await _known(request)
    return Response(wire.encode(document(s, wallet)), media_type="application/json")


async def get_jwks(request: Request) -> Response:
    s, wallet = await _known(request)
    return Response(wire.encode({"keys": await s.wallets.keys_of(wallet.path)}), media_type="application/json")


ROUTES = [
    Route("/{path:path}/jwks.json", get_jwks, methods=["GET"]),
    Route("/{path:path}", get_wallet_address, methods=["GET"]),
]
