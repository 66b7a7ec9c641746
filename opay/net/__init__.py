"""Outbound HTTP to URLs that someone outside the ASE named (opay/net/fetch.py)."""
