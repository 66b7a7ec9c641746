"""Starlette apps: resource server, wallet addresses, authorization server routes, operator API."""
