"""A TCP proxy in front of the real MariaDB that reads the client's packets.

A ``tests.helpers.CuttableProxy`` that, besides cutting everything, can
lose the answer to one COMMIT: the transaction that wrote a given table is
committed by MariaDB, whose OK is then dropped and both sides aborted, so the
node's driver sees the connection fail mid-commit. That is the outage case
where the node cannot know whether its write took effect, made deterministic.
The MySQL protocol frames every packet as a 3-byte length, a sequence byte
and a payload; a COM_QUERY payload is 0x03 and the statement's text (asyncmy
sends statements with their parameters filled in, and COMMIT as a query).
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.helpers import CuttableProxy

_COM_QUERY = 3
#: The bulk statement MariaDB's driver binds many rows with (asyncmy's executemany).
COM_STMT_BULK_EXECUTE = 0xFA


class MariaDbProxy(CuttableProxy):
    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._armed: tuple[bytes, bool] | None = None
        self._cut_on: bytes | None = None
        self._lose_command: int | None = None
        #: Set once a commit's answer was lost.
        self.commit_lost = asyncio.Event()

    def lose_next_commit(self, writing: str, then_cut: bool = False) -> None:
        """Drop the answer to the COMMIT of the next transaction that inserts
        into table ``writing``; ``then_cut``: and refuse every connection
        from then on (the store stays away) until :meth:`start`."""
        self._armed = (f"insert into {writing}".encode(), then_cut)
        self.commit_lost.clear()

    def lose_next_answer_to(self, command: int) -> None:
        """Drop MariaDB's answer to the next packet of this command (e.g.
        :data:`COM_STMT_BULK_EXECUTE` on an autocommitting connection: the
        rows are kept, the client cannot know) and abort both sides."""
        self._lose_command = command
        self.commit_lost.clear()

    def cut_on(self, statement: str) -> None:
        """Cut everything, as an outage would, when a statement starting with
        ``statement`` is sent (it never reaches MariaDB), until :meth:`start`."""
        self._cut_on = statement.lower().encode()

    async def _relay(
        self,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        ur: asyncio.StreamReader,
        uw: asyncio.StreamWriter,
    ) -> None:
        wrote, lose = [False], [False]  # this connection's transaction

        def watch(payload: bytes) -> bool:
            if self._lose_command is not None and payload[:1] == bytes([self._lose_command]):
                self._lose_command = None
                lose[0] = True
                return True
            if payload[:1] != bytes([_COM_QUERY]):
                return True
            sql = payload[1:].strip().lower()
            if self._cut_on is not None and sql.startswith(self._cut_on):
                self._cut_on = None
                self._cut_now()
                return False
            if self._armed is None:
                return True
            if sql.startswith(self._armed[0]):
                wrote[0] = True
            elif sql == b"commit" and wrote[0]:
                lose[0] = True
            return True

        async def upstream() -> None:
            buf = b""
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    buf += data
                    while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:3], "little"):
                        n = 4 + int.from_bytes(buf[:3], "little")
                        if not watch(buf[4:n]):
                            return
                        buf = buf[n:]
                    uw.write(data)
                    await uw.drain()
            uw.close()

        async def downstream() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await ur.read(65536):
                    if lose[0]:  # MariaDB answered the COMMIT: it is done
                        then_cut = self._armed is not None and self._armed[1]
                        self._armed = None
                        if then_cut:
                            self._cut_now()
                        w.transport.abort()
                        uw.transport.abort()
                        self.commit_lost.set()
                        return
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(upstream(), downstream())
