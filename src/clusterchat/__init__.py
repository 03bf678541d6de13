"""clusterchat: a cluster chat server and client, wire-compatible with the C++ original."""

from clusterchat import native

__version__ = "0.1.0"

native.choose()  # the compiled hot modules, or their sources (native.py)
