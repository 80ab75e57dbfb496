"""Auto-pipelining for Redis: every command goes out on one long-lived connection, the
commands of one event-loop turn in one write, and the replies are read back in order.

redis-py spends far more per command on its own bookkeeping (taking a pooled connection,
timeouts, an awaited read per reply, giving the connection back) than Redis spends running
it.  Here a command costs a hiredis `pack_command` on the way out and a hiredis `gets` on the
way back; a turn's commands share one write, and the next turn's are written while the last
one's replies are still on their way (Redis answers one connection in order).  Every command is
still atomic on its own (this is not a transaction; nothing needs it to be), and each caller
gets its own reply or its own error.

A connection that fails fails every unanswered command on it with a connection error, exactly
as each would have failed alone: the caller cannot know whether a script ran, which is what
client idempotency keys are for.  Nothing is resent here for the same reason; the next command
opens a new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.store.loop_turn import Batch, TurnQueue

Command = tuple[Any, ...]
Pending = Batch[Command]


class CommandBatcher:
    """Commands for the Redis at `url` (`redis://`, `rediss://`, `unix://`, with user,
    password and db as redis-py reads them).  A connection on which replies are awaited and
    none arrives for `deadline` seconds is dropped and its commands fail."""

    def __init__(self, url: str, deadline: float, connect_timeout: float = 2.0) -> None:
        self._address = parse_url(url)
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._turn: TurnQueue[Command] = TurnQueue(self._flush)
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command; its raw reply (or its error) comes back to this caller alone."""
        return self._turn.submit(command)

    def _flush(self, batch: Pending) -> None:
        wire = self._wire
        if wire is not None and wire.open:
            wire.send(batch)
            return
        task = asyncio.get_running_loop().create_task(self._send_when_connected(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send_when_connected(self, batch: Pending) -> None:
        """The first batch after start-up or a failure opens the connection; the batches of
        the turns until it is open wait for the same one."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        connecting = self._connecting
        try:
            wire = await connecting
        except Exception as exc:
            _fail(batch, exc)
            return
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._wire = wire
        wire.send(batch)

    async def _connect(self) -> _Wire:
        loop = asyncio.get_running_loop()
        address = self._address
        wire = _Wire(self._deadline)
        async with asyncio.timeout(self._connect_timeout):
            if address.get("connection_class") is UnixDomainSocketConnection:
                await loop.create_unix_connection(lambda: wire, address["path"])
            else:
                await loop.create_connection(
                    lambda: wire,
                    address.get("host", "localhost"),
                    address.get("port", 6379),
                    ssl=_tls(address) if address.get("connection_class") is SSLConnection else None,
                )
            handshake: list[Command] = []
            if address.get("password"):
                credentials = (address.get("username"), address["password"])
                handshake.append(("AUTH", *(part for part in credentials if part)))
            if address.get("db"):
                handshake.append(("SELECT", address["db"]))
            for reply in await asyncio.gather(*(wire.ask(command) for command in handshake)):
                if isinstance(reply, Exception):
                    wire.close()
                    raise reply
        return wire

    async def aclose(self) -> None:
        """Let commands already sent deliver their replies, then close the connection."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._wire is not None:
            await self._wire.drain()
            self._wire.close()
            self._wire = None


class _Wire(asyncio.Protocol):
    """One connection: what was sent waits, in order, for its reply."""

    def __init__(self, deadline: float) -> None:
        self.open = False
        self._transport: asyncio.Transport | None = None
        self._replies = hiredis.Reader()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadline = deadline
        self._answered = 0  # replies so far: the watchdog's sign of progress
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.open = True

    def send(self, batch: Pending) -> None:
        assert self._transport is not None
        self._transport.write(b"".join([hiredis.pack_command(command) for command, _ in batch]))
        self._waiting.extend(future for _, future in batch)
        if self._watchdog is None:
            self._arm_watchdog(self._answered)

    async def ask(self, command: Command) -> Any:
        """One command outside the batches (the handshake); an error reply is returned."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send([(command, future)])
        try:
            return await future
        except ResponseError as exc:
            return exc

    def data_received(self, data: bytes) -> None:
        self._replies.feed(data)
        while True:
            try:
                reply = self._replies.gets()
            except hiredis.ProtocolError as exc:  # out of step: no later reply can be trusted
                self._abandon(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            self._answered += 1
            future = self._waiting.popleft()
            if future.done():  # its caller went away (a cancelled request)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._fail_waiting(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _arm_watchdog(self, answered: int) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self._deadline, self._check, answered)

    def _check(self, answered_then: int) -> None:
        """A timer per connection, not per command: stalled means replies are awaited and
        none came during a whole `deadline`."""
        self._watchdog = None
        if not self._waiting:
            return
        if self._answered == answered_then:
            self._abandon(RedisTimeoutError("Redis did not reply in time"))
            return
        self._arm_watchdog(self._answered)

    def _abandon(self, exc: Exception) -> None:
        """Fail what is waiting and close: the next command opens a new connection."""
        self.close()
        self._fail_waiting(exc)

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)

    async def drain(self) -> None:
        if self._waiting:
            await asyncio.gather(*list(self._waiting), return_exceptions=True)

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()


def _error(message: str) -> ResponseError:
    """The exception redis-py would raise for this error reply (callers rely on these two)."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


def _tls(address: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=address.get("ssl_ca_certs"))
    if str(address.get("ssl_cert_reqs", "required")).lower() in {"none", "cert_none"}:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _fail(batch: Pending, exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
