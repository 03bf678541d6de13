"""clusterchat: a cluster chat server and client, wire-compatible with the C++ original."""

__version__ = "0.1.0"
