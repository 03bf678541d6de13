"""`clusterchat client`: wire a ChatClient to the right front end."""

from __future__ import annotations

import os
import ssl
import sys
from dataclasses import dataclass

from clusterchat.client.app import Controller, ask_password, interactive, scripted
from clusterchat.client.session import ChatClient


@dataclass
class ClientOptions:
    host: str
    port: int
    user: int | None
    password: str | None
    json: bool
    tls: bool = False
    tls_ca: str | None = None


def _print(line: str) -> None:
    print(line, flush=True)


def _eprint(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run(opts: ClientOptions) -> int:
    out = _eprint if opts.json else _print
    holder: list[Controller] = []

    def raw(frame: bytes) -> None:
        print(frame.decode(errors="replace"), flush=True)

    client = ChatClient(
        opts.host,
        opts.port,
        on_push=lambda msg: holder[0].pushed(msg) if not opts.json else None,
        on_status=out,
        on_raw=raw if opts.json else None,
        tls=ssl.create_default_context(cafile=opts.tls_ca) if opts.tls else None,
    )
    ctl = Controller(client, out, ask_password=None)
    ctl.multiline = sys.stdin.isatty()
    holder.append(ctl)
    try:
        await client.connect()
    except OSError as exc:
        _eprint(f"Cannot connect to {opts.host}:{opts.port}: {exc.strerror or exc}")
        return 1
    out(f"Connected to {opts.host}:{opts.port}. Type help for commands.")
    try:
        if opts.user is not None:
            password = opts.password or os.environ.get("CLUSTERCHAT_PASSWORD")
            if password is None and sys.stdin.isatty():
                password = await ask_password(client, out)
            if password is not None:
                await ctl.login(opts.user, password)
        if sys.stdin.isatty():
            await interactive(ctl, client)
        else:
            await scripted(ctl)
            return 1 if ctl.failed else 0  # a script learns that a line was not done
    finally:
        await client.close()
    return 0
