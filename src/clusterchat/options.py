"""`clusterchat server`'s options: one table, from which both the command
line (argparse, an environment variable for each option) and
:class:`~clusterchat.config.Settings` are built.

To add an option: give ``Settings`` (or ``Limits``) a field with its default
and a comment, then add one :class:`Option` row below, in the group where a
newcomer would look for it. The environment variable (``CLUSTERCHAT_`` and
the flag), the type and the default that ``--help`` shows all come from the
field; nothing else needs to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clusterchat.config import HashCost, Limits, Settings
from clusterchat.protocol.trusted import TrustedProxies

#: Settings fields that are dataclasses of their own; an option names one of
#: their fields as "limits.max_friends".
_PARTS: dict[str, type[Any]] = {"limits": Limits, "hash_cost": HashCost}


@dataclass(frozen=True)
class Option:
    """One server option. Its value is the field's type (int, float, str, a
    comma list for a tuple); several fields: a comma list, one part each."""

    flag: str
    fields: tuple[str, ...]
    metavar: str
    help: str
    #: The default as --help shows it, where the value says little ("1 MiB").
    shown: str | None = None
    #: Trailing parts of a comma list that may be left out (they keep their default).
    optional: int = 0
    #: Text to value(s), where converting each part to its field's type does not do.
    parse: Callable[[str], Any] | None = None
    #: The default, for an option that sets no Settings field.
    default: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return "CLUSTERCHAT_" + self.dest.upper()

    @property
    def default_text(self) -> str:
        if self.default is not None:
            return self.default
        return ",".join(_text(_spec(path)) for path in self.fields)

    def convert(self, text: str) -> Any:
        """Text from the command line or the environment to the value; a
        single field's value is a scalar, several fields' a tuple."""
        try:
            if self.parse is not None:
                return self.parse(text)
            if len(self.fields) == 1:
                return _spec(self.fields[0]).convert(text)
            parts = text.split(",")
            specs = [_spec(path) for path in self.fields]
            if not len(specs) - self.optional <= len(parts) <= len(specs):
                raise ValueError(text)
            given = [spec.convert(part) for spec, part in zip(specs, parts, strict=False)]
            return tuple(given + [spec.default for spec in specs[len(parts) :]])
        except ValueError:
            raise argparse.ArgumentTypeError(f"wants {self.metavar}, not {text!r}") from None

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        default = self.default_text if self.shown is None else self.shown
        where = f"env {self.env}; default: {default}" if default else f"env {self.env}"
        parser.add_argument(
            self.flag,
            dest=self.dest,
            metavar=self.metavar,
            type=self.convert,
            default=os.environ.get(self.env, self.default_text),
            help=f"{self.help} [{where}]".replace("%", "%%"),
        )


@dataclass(frozen=True)
class _Field:
    """What the table needs to know of one Settings (or Limits) field."""

    kind: Any  # int, float, str, or tuple (a comma list of strings)
    default: Any  # None when optional or computed
    #: ``X | None``: an empty value ('' or 0) on the command line is None.
    optional: bool
    #: Computed when the node starts (default_factory): an empty value is that default.
    computed: bool

    def convert(self, text: str) -> Any:
        if self.kind is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return self.kind(text)


@functools.cache
def _spec(path: str) -> _Field:
    owner: type[Any] = Settings
    part, _, name = path.rpartition(".")
    if part:
        owner = _PARTS[part]
    field = {f.name: f for f in dataclasses.fields(owner)}[name]
    kind = typing.get_type_hints(owner)[name]
    optional = type(None) in typing.get_args(kind)
    if optional:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is tuple:
        kind = tuple
    computed = field.default is dataclasses.MISSING
    default = None if computed else field.default
    return _Field(kind, default, optional, computed)


def _text(spec: _Field) -> str:
    value = spec.default
    if value is None:
        return "0" if spec.kind in (int, float) else ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _rate(text: str) -> tuple[float, int]:
    """PER_SECOND[,BURST]; without BURST, one second's worth (at least 1)."""
    per_second, _, burst = text.partition(",")
    rate = float(per_second)
    return rate, int(burst) if burst else max(1, int(rate))


def _port(text: str) -> int:
    """A TCP port: 0 to 65535 (0: any free one; for --http-port, off). The
    kernel would take 70000 as 4464 and listen there."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {text!r}")
    return port


#: URL schemes of the stores clusterchat runs on (without a driver, the
#: asyncio one is chosen: storage/sql.py ``async_url``).
DB_SCHEMES = ("sqlite+aiosqlite", "sqlite", "mysql+asyncmy", "mysql", "mariadb+asyncmy", "mariadb")


def _db_url(text: str) -> str:
    """A store URL we can open; told at once rather than as a driver's traceback."""
    scheme, sep, _ = text.partition("://")
    if text and (not sep or scheme.lower() not in DB_SCHEMES):
        raise argparse.ArgumentTypeError(
            f"unsupported database {scheme if sep else text!r}: use "
            "sqlite+aiosqlite:///PATH (SQLite) or mysql+asyncmy://USER@HOST:3306/DB "
            "(MariaDB/MySQL; mysql:// works too)"
        )
    return text


#: The server's options, in groups as `clusterchat server --help` shows them.
SERVER_OPTIONS: tuple[tuple[str, tuple[Option, ...]], ...] = (
    ("where it listens", (
        Option("--host", ("host",), "ADDRESS", "address to listen on"),
        Option("--port", ("port",), "PORT", "TCP port", parse=_port),
        Option("--tls-cert", ("tls_cert",), "PEM",
               "serve TLS with this certificate chain; or terminate TLS in nginx "
               "(`cluster nginx-conf --tls-cert`)"),
        Option("--tls-key", ("tls_key",), "PEM", "the certificate's private key"),
        Option("--http-port", ("http_port",), "PORT",
               "also serve the web client on this HTTP port: open http://HOST:PORT/ in a "
               "browser; it chats over a WebSocket at /ws; 0: off", parse=_port),
        Option("--http-origins", ("http_origins",), "ORIGIN[,ORIGIN]",
               "web pages (scheme://host[:port]) allowed to open a chat WebSocket, '*' for "
               "any; default: only the page this node (or nginx in front of it) serves"),
        Option("--ops-from", ("ops_from",), "ADDRESS[,NETWORK...]",
               "who may read /metrics, /healthz and /readyz on the HTTP port (others get "
               "403); addresses or networks; '' : no one",
               shown="loopback and private networks",
               parse=lambda text: TrustedProxies(text.split(",")).specs),
        Option("--workers", (), "N",
               "run N processes sharing the port (SO_REUSEPORT), joined through --redis",
               parse=int, default="1"),
    )),
    ("store", (
        Option("--db", ("db_url",), "URL",
               "SQLAlchemy URL of the store, e.g. mysql+asyncmy://root@127.0.0.1:3306/chat",
               shown="an SQLite file in $CLUSTERCHAT_HOME or ~/.local/share/clusterchat",
               parse=_db_url),
        Option("--db-pool", ("db_pool",), "N", "connections to MariaDB/MySQL this node keeps"),
        Option("--history-days", ("history_days",), "DAYS",
               "keep every 1:1 and group message this long for clients to page back "
               "through (HISTORY); 0: keep none, write nothing. Fractions allowed"),
        Option("--history-queue", ("history_queue",), "N",
               "messages waiting to be written to history before chats are refused with "
               'ERROR 151 "busy, retry" (the original client is slowed instead)'),
    )),
    ("cluster (nodes joined through Redis)", (
        Option("--redis", ("redis_url",), "URL",
               "join a cluster through this Redis, e.g. redis://127.0.0.1:6379/0; without "
               "it the node runs alone"),
        Option("--redis-prefix", ("redis_prefix",), "PREFIX",
               "prefix of every Redis key and channel, so clusters can share a Redis"),
        Option("--node-id", ("node_id",), "NAME", "name of this node in the cluster",
               shown="random"),
        Option("--presence-ttl", ("presence_ttl",), "SECONDS",
               "a node that dies without a goodbye frees its users after this long"),
        Option("--bus-window", ("bus_window",), "BYTES",
               "messages this node may have on their way to another node before senders "
               "wait (then get ERROR 151 busy); keep (nodes - 1) x this under Redis's "
               "client-output-buffer-limit pubsub, or Redis drops the receiver",
               shown="4 MiB"),
    )),
    ("connections and memory", (
        Option("--max-connections", ("max_connections",), "N",
               "connections accepted; more are told the server is full and closed",
               shown="0, what the open-files limit allows"),
        Option("--max-connections-per-address", ("max_connections_per_address",), "N",
               "connections from one client address; 0: no limit. Users behind one NAT "
               "share an address: raise it for them (behind nginx the real address comes "
               "in its PROXY line, or X-Forwarded-For for browsers)"),
        Option("--trusted-proxy", ("trusted_proxies",), "ADDRESS[,NETWORK...]",
               "proxies whose word on the real client address is believed: nginx's PROXY "
               "lines (TCP, `proxy_protocol on;`) and X-Forwarded-For (WebSocket/HTTP, "
               "rightmost entry not itself trusted); addresses or networks (10.0.0.0/8); "
               "not capped per address themselves; '' trusts none",
               parse=lambda text: TrustedProxies(text.split(",")).specs),
        Option("--shed-lag", ("shed_lag",), "SECONDS",
               "when the event loop runs this late, new connections are refused (ERROR "
               "160) until the node catches up; 0: never"),
        Option("--memory-budget", ("memory_budget",), "BYTES",
               "bytes this node may hold for other people (messages waiting for slow "
               "readers, messages waiting to be stored); past it chats are refused with "
               'ERROR 151 "busy, retry" (the original client is slowed instead)',
               shown="0, a quarter of the machine's memory, between 64 MiB and 4 GiB"),
        Option("--output-limit", ("output_limit",), "BYTES",
               "messages held for a client that stops reading before it is disconnected "
               "(the rest is stored for its next login)", shown="1 MiB"),
        Option("--max-frame", ("max_frame",), "BYTES",
               "largest request accepted; a bigger one gets an error and the connection "
               "is closed"),
    )),
    ("timeouts", (
        Option("--login-timeout", ("login_timeout",), "SECONDS",
               "close connections that do not log in within this"),
        Option("--frame-timeout", ("frame_timeout",), "SECONDS",
               "close a connection whose request, once begun, has not fully arrived within "
               "this (a byte now and then holds no slot)"),
        Option("--idle-timeout", ("idle_timeout",), "SECONDS",
               "close logged-in connections of our client silent this long (it pings every "
               "30 s; the original client is left to TCP keepalive)"),
    )),
    ("accounts, passwords and logins", (
        Option("--hash-cost", ("hash_cost.time_cost", "hash_cost.memory_kib",
                               "hash_cost.parallelism"), "T,M,P",
               "argon2id time cost, memory in KiB, parallelism for password hashes "
               "(the default is OWASP's minimum)"),
        Option("--login-queue", ("login_queue",), "N",
               "password checks that may wait for a hashing thread; past it logins and "
               "registrations are refused as busy at once, so accepted ones stay fast; "
               "0: no limit"),
        Option("--register-queue", ("register_queue",), "N",
               "registrations that may wait for their own hashing threads (half the "
               "login pool's); past it they are refused as busy, and logins keep their share"),
        Option("--registrations", ("limits.registrations_per_address",
                                   "limits.registration_window"), "N,SECONDS",
               "registrations one client address may attempt within SECONDS (accounts per "
               "address per day); 0 turns it off; raise it for a campus behind one NAT",
               optional=1),
        Option("--login-failures", ("limits.login_failures", "limits.login_failures_per_address",
                                    "limits.login_window"), "ACCOUNT,ADDRESS,SECONDS",
               "brute-force guard: failed password logins free of delay per (account, "
               "client address) and per address; past them each try waits twice as long as "
               "the last (see --login-delay); counts are forgotten SECONDS after the last "
               "failure; a valid ticket always works; 0 turns one off"),
        Option("--login-delay", ("limits.login_delay", "limits.login_delay_max"), "FIRST,MAX",
               "seconds the first try past --login-failures waits, doubling up to MAX"),
        Option("--ticket-lifetime", ("limits.ticket_lifetime",), "SECONDS",
               "how long a session ticket logs in again without the password; each use "
               "replaces it (the default is 28 days)"),
    )),
    ("what one user may do", (
        Option("--message-rate", ("limits.message_rate", "limits.message_burst"),
               "PER_SECOND[,BURST]",
               "requests a logged-in user (or a connection before login) may make per "
               "second, sustained, and at once (flood limit; unreadable lines count); over "
               "it a client gets ERROR 170 (closed, if the line was unreadable), an original "
               "client is slowed down instead; 0 turns it off (for benchmarks)", parse=_rate),
        Option("--address-burst", ("limits.address_burst",), "N",
               "requests one client address may make at once before login, over all its "
               "connections (then --message-rate's PER_SECOND); 0: per connection only"),
        Option("--offline-quota", ("limits.max_offline_messages", "limits.max_offline_bytes",
                                   "limits.max_stored_message"), "MESSAGES,BYTES,MESSAGE_BYTES",
               "what one receiver may have waiting (messages, total bytes) and how long a "
               "message kept for an offline receiver may be; past them the sender gets "
               "ERROR 171/172 and nothing is sent; 0 turns one off"),
        Option("--offline-share", ("limits.offline_share",), "FRACTION",
               "the part of one receiver's --offline-quota (messages and bytes) one sender "
               "may fill; past it that sender gets ERROR 174 (in a group, the member is "
               "listed in the ack's `full`) while others can still leave messages; group "
               "messages count toward their writer's share; 0 or 1 turns it off"),
        Option("--offline-group-share", ("limits.offline_group_share",), "FRACTION",
               "the part of one receiver's --offline-quota group messages may fill, all "
               "groups and writers together; past it a group message is not kept for "
               "that member (listed in the ack's `full`; it is in the group's history), "
               "and the rest stays for 1:1 messages; 0 or 1 turns it off"),
        Option("--user-quota", ("limits.max_groups_created", "limits.max_memberships",
                                "limits.max_friends"), "GROUPS_CREATED,MEMBERSHIPS,FRIENDS",
               "what one user may create, join and befriend (ERROR 173 past it); 0 turns "
               "one off"),
        Option("--max-group-size", ("limits.max_group_size",), "N",
               "members a group may have"),
        Option("--rejoin-after", ("limits.rejoin_after",), "SECONDS",
               "after leaving a group, a user may join it again only this much later, "
               "and two users whose friendship ended may befriend again only this much "
               "later (ERROR 170 before): joining and leaving in a loop costs every member, "
               "adding and removing a friend in a loop pushes them an event each time; 0: "
               "at once"),
        Option("--receipt-window", ("limits.receipt_window",), "N",
               "clients with receipts: messages written and not yet acknowledged before "
               "the client is disconnected (ERROR 187; all of them are stored for its next "
               "login)"),
        Option("--receipt-bytes", ("limits.receipt_bytes",), "BYTES",
               "clients with receipts: bytes written and not yet acknowledged before the "
               "client is disconnected (counted against --memory-budget)", shown="2 MiB"),
        Option("--receipt-timeout", ("limits.receipt_timeout",), "SECONDS",
               "clients with receipts: disconnect one that acknowledges nothing this long "
               "while messages wait (ERROR 186; they are stored for its next login)"),
    )),
)  # fmt: skip

#: Every server option by its flag ("--db" is also an option of admin, db and cluster up).
OPTIONS: dict[str, Option] = {o.flag: o for _, group in SERVER_OPTIONS for o in group}


def add_server_options(parser: argparse.ArgumentParser) -> None:
    for title, group in SERVER_OPTIONS:
        section = parser.add_argument_group(title)
        for option in group:
            option.add_to(section)


def settings_from(values: Mapping[str, Any], **fixed: Any) -> Settings:
    """Settings from parsed option values (``vars(args)``); ``fixed`` fields
    (decided by the process, not by an option) win."""
    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
    for option in OPTIONS.values():
        value = values[option.dest]
        several = value if len(option.fields) > 1 else (value,)
        for path, one in zip(option.fields, several, strict=bool(option.fields)):
            spec = _spec(path)
            if not one and spec.computed:
                continue
            if not one and spec.optional:
                one = None
            part, _, name = path.rpartition(".")
            (parts[part] if part else top)[name] = one
    top.update({name: _PARTS[name](**given) for name, given in parts.items()})
    return Settings(**(top | fixed))


#: Settings fields that no option sets: containers of option-set fields, or
#: set by the process itself (workers share the port), or for tests.
NOT_OPTIONS = frozenset({"limits", "hash_cost", "reuse_port", "shutdown_grace"})
