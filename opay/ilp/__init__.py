"""Interledger wire codecs: OER, ILPv4 packets and STREAM."""
