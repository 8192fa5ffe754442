"""Helpers for policies that look at the request body: bounded read-ahead with a stall timeout, replay of what
was read, and a streaming byte counter."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from gatewatch.io.interfaces import ClientGone

ENDED, OVER, STALLED = "ended", "over", "stalled"


class BodyTooLarge(ClientGone):
    """A streamed body passed a size limit after forwarding began. It ends the exchange like a vanished client
    (the upload is cut and the connection closed). A ClientGone subclass so that today's engine already cuts
    both sides cleanly; it names the policy so an engine that recognises it can record the late refusal
    (`policy`, `type`, reason size.too_large) and answer 413 when no response head was sent yet."""

    def __init__(self, policy: str = "", type_: str = "", limit: int = 0):
        super().__init__(f"request body over {limit} bytes")
        self.policy, self.type, self.limit = policy, type_, limit


async def read_ahead(body: AsyncIterator[bytes], limit: int, idle_s: float) -> tuple[list[bytes], int, str]:
    """Read until the body ends, more than `limit` bytes arrived, or it stalls longer than `idle_s`:
    (chunks, bytes read, ENDED | OVER | STALLED)."""
    chunks, total = [], 0
    it = body.__aiter__()
    while total <= limit:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), idle_s)
        except StopAsyncIteration:
            return chunks, total, ENDED
        except asyncio.TimeoutError:
            return chunks, total, STALLED
        chunks.append(chunk)
        total += len(chunk)
    return chunks, total, OVER


def stalled(policy, idle_s: float):
    """The verdict for a body that stalled while a policy was reading it: 408 client_timeout, like a stall
    during forwarding (in shadow mode the request goes on and the forwarding's own idle timeout applies)."""
    from gatewatch.edge.policies.base import error
    from gatewatch.telemetry.names import Outcome, PolicyReason

    return error(policy, PolicyReason.BODY_STALLED.value, True, 408, Outcome.CLIENT_TIMEOUT,
                 f"the request body stalled for more than {idle_s:g}s")


async def replay(chunks: list[bytes], rest: AsyncIterator[bytes] | None = None) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c
    if rest is not None:
        async for c in rest:
            yield c


async def counted(body: AsyncIterator[bytes], already: int, limit: int, policy: str = "",
                  type_: str = "") -> AsyncIterator[bytes]:
    total = already
    async for chunk in body:
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(policy, type_, limit)
        yield chunk
