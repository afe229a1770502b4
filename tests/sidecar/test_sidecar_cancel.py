"""An async caller cancelled while its acquire is in flight leaves nothing held on the sidecar."""

from __future__ import annotations

import asyncio
import tempfile

from sidecar_helpers import start_server

import llmthrottle as lt

CONFIG = """
[limits."*"]
concurrency = 1
"""


def test_cancelled_async_acquire_gives_its_reservation_back() -> None:
    with tempfile.TemporaryDirectory(prefix="lt-cancel-") as directory:
        server = start_server(directory, CONFIG)
        sidecar = lt.Sidecar(server.socket)
        try:
            lim = lt.Limiter(None, state=sidecar)

            async def main() -> bool:
                await (await lim.try_acquire_async("k")).cancel_async()  # connected before the race
                for attempt in range(30):
                    task = asyncio.create_task(lim.try_acquire_async("k"))
                    # Cancel at different points: before the request is flushed, while it is in
                    # flight, and (sometimes) after its answer arrived.
                    for _ in range(attempt % 3):
                        await asyncio.sleep(0)
                    task.cancel()
                    try:
                        reservation = await task
                        reservation.cancel()  # answered before the cancel: give it back here
                    except asyncio.CancelledError:
                        pass
                # Every slot came back: one more acquire fits under the cap of 1.
                try:
                    for _ in range(100):
                        decision = await lim.try_acquire_async("k")
                        if decision:
                            await decision.cancel_async()
                            return True
                        await asyncio.sleep(0.01)
                    return False
                finally:
                    sidecar.close()  # inside the loop its async connection belongs to

            assert asyncio.run(main())
        finally:
            sidecar.close()
            server.stop()


def test_an_answer_for_a_cancelled_acquire_is_given_back_whenever_it_arrives() -> None:
    """The races, one by one and without a server: the caller's future is cancelled before its
    answer arrives (also when the answer comes before the caller's task resumes), or the answer
    arrived first and the caller is cancelled before it saw it."""
    from llmthrottle.client.connection import AsyncConnection
    from llmthrottle.sidecar.protocol import OK, Op, encode_frame

    class Transport:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(data)

        def is_closing(self) -> bool:
            return False

    admitted = [True, 0.0, 0.0, 0.0, None, None, {}, "42" * 16, {"requests": 1}]

    async def main() -> None:
        connection = AsyncConnection("unused")
        connection.connection_made(Transport())  # type: ignore[arg-type]
        # 1. Cancelled while in flight: the answer finds the future cancelled.
        future = connection.call([Op.ACQUIRE, "default", "k", {}, 0.0])
        future.cancel()
        connection.data_received(encode_frame([[1, OK, admitted]]))
        assert connection._batch[-1][1:] == [Op.CANCEL, "42" * 16]
        # A cancelled call of another op (or a denied acquire) gives nothing back.
        for result in (None, [False, 1.0, 0.0, 1.0, "requests", "k", {}, None, None], [[1]] * 9):
            other = connection.call([Op.PING])
            other.cancel()
            before = len(connection._batch)
            connection.data_received(encode_frame([[connection._next_id, OK, result]]))
            assert len(connection._batch) == before
        # 2. Answered first, then the caller is cancelled before it resumed.
        answered = connection.call([Op.ACQUIRE, "default", "k", {}, 0.0])
        connection.data_received(encode_frame([[connection._next_id, OK, [*admitted[:7], "43" * 16, {}]]]))
        assert answered.result()[7] == "43" * 16
        connection.abandon(answered)
        await asyncio.sleep(0)
        assert connection._batch[-1][1:] == [Op.CANCEL, "43" * 16]

    asyncio.run(main())
