"""An async caller cancelled while its acquire is in flight leaves nothing held on the sidecar."""

from __future__ import annotations

import asyncio
import tempfile

import llmthrottle as lt
from sidecar_helpers import start_server

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
