"""The service's connections send at once (TCP_NODELAY), also on the socket ``--workers`` shares."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from uvicorn.server import ServerState

from studyhall.optimizer.service._server import protocol


async def _app(scope, receive, send):  # pragma: no cover - never called: no request is sent
    raise AssertionError("no request expected")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_connections_on_a_shared_listening_socket_turn_nagle_off(http):
    # uvicorn's bind_socket makes the socket `serve --workers` shares; its proto is 0, so asyncio
    # leaves Nagle on for the connections it accepts, and each answer written in two parts waited
    # for the client's delayed ACK: 40 ms a request (88 instead of 317 ask+tell pairs/s).
    listening = uvicorn.Config(_app, host="127.0.0.1", port=0).bind_socket()
    cls = protocol(5.0, 8, http)
    config = uvicorn.Config(_app, http=cls, log_level="warning")
    made: list[asyncio.Protocol] = []

    async def scenario() -> int:
        def factory() -> asyncio.Protocol:
            proto = cls(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
            made.append(proto)
            return proto

        server = await asyncio.get_running_loop().create_server(factory, sock=listening)
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(200):
                if made and getattr(made[0], "transport", None) is not None:
                    break
                await asyncio.sleep(0.01)  # the accept, on this same loop
            sock = made[0].transport.get_extra_info("socket")  # type: ignore[attr-defined]
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario()) == 1
