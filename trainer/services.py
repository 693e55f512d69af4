"""The trainer as a client of the gateway and the verifier, on an event loop of its own.

Network I/O runs on an asyncio loop in a background thread while the main thread computes
(torch releases the GIL in its kernels), so the teacher's seconds overlap the KL anchor's
forward and backward. Both services are checked at start: one that cannot be reached, or a
teacher the gateway does not serve, fails the run at once with the URL and the reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import httpx
from pydantic import Field
from pydantic_settings import BaseSettings

from omniopd.gateway.client import AsyncGatewayClient
from omniopd.log import register_secret
from omniopd.proto.v1 import gateway_pb2
from omniopd.retry import RetryPolicy
from omniopd.settings import load_settings, settings_config
from omniopd.trainer.retry import Counters
from omniopd.trainer.scores import ForkScores, ScoreSettings, score_as_replies_arrive
from omniopd.trainer.teacher import TeacherReply, TeacherRequest, stream_teacher
from omniopd.verifier.client import AsyncVerifierClient

T = TypeVar("T")
STARTUP_TIMEOUT_S = 15.0


class ServiceUnreachable(SystemExit):
    """A service failed its start-up check; the message names its URL."""


class ServiceTokens(BaseSettings):
    """Bearer tokens, from the environment only (never in the config, never logged)."""

    model_config = settings_config("")

    gateway_token: str | None = Field(None, description="OMNIOPD_GATEWAY_TOKEN")
    verifier_token: str | None = Field(None, description="OMNIOPD_VERIFIER_TOKEN")


class BackgroundLoop:
    """An asyncio loop on a daemon thread; ``submit`` returns a concurrent future."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="io")
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Services:
    """Gateway and verifier clients shared by all steps of a run (all I/O on ``io``)."""

    def __init__(
        self,
        *,
        gateway: str | None,
        verifier: str | None,
        teacher: str | None,
        policy: RetryPolicy,
        timeout_s: float,
    ) -> None:
        tokens = load_settings(ServiceTokens)
        register_secret(tokens.gateway_token)
        register_secret(tokens.verifier_token)
        self.gateway, self.verifier_url, self.teacher = gateway, verifier, teacher
        self.policy, self.timeout_s = policy, timeout_s
        self.verifier_headers = (
            {"Authorization": f"Bearer {tokens.verifier_token}"} if tokens.verifier_token else {}
        )
        self.io = BackgroundLoop()
        self._closed = False
        self.client: AsyncGatewayClient | None = None
        self.verifier: AsyncVerifierClient | None = None
        self.teacher_info: gateway_pb2.TeacherInfo | None = None
        self.io.run(self._open(tokens.gateway_token, tokens.verifier_token))

    async def _open(self, gateway_token: str | None, verifier_token: str | None) -> None:
        # Both clients on the run's retry policy (the verifier's retries are counted per step,
        # see scores.py); the timeout bounds each call, and each wait for a stream's next reply.
        if self.gateway:
            self.client = AsyncGatewayClient(
                self.gateway, token=gateway_token, policy=self.policy, timeout_s=self.timeout_s
            )
        if self.verifier_url:
            self.verifier = AsyncVerifierClient(
                self.verifier_url, token=verifier_token, timeout=self.timeout_s, policy=self.policy
            )

    # -- start-up checks ------------------------------------------------------------------

    def check(self, *, teacher_samples: int | None = None, flag: str = "--teacher-samples") -> None:
        """Fail fast: each configured service answers, and the teacher exists with room for M.

        On failure the clients are closed and :class:`ServiceUnreachable` names the URL.
        """
        problem = self.io.run(self._check(teacher_samples, flag))
        if problem:
            self.close()
            raise ServiceUnreachable(problem)

    async def _check(self, teacher_samples: int | None, flag: str) -> str | None:
        """The first problem found, as a message (a SystemExit must not escape the loop)."""
        if self.client is not None:
            try:
                names = await self.client.teachers(timeout_s=STARTUP_TIMEOUT_S)
            except grpc.aio.AioRpcError as err:
                return (
                    f"cannot reach the teacher gateway at {self.gateway} (--gateway):"
                    f" {err.code().name}: {err.details()}"
                )
            if self.teacher not in names:
                return (
                    f"the gateway at {self.gateway} has no teacher {self.teacher!r} (--teacher);"
                    f" it serves: {', '.join(sorted(names)) or 'none'}"
                )
            self.teacher_info = names[self.teacher]
            if teacher_samples is not None and teacher_samples > self.teacher_info.max_n:
                return (
                    f"{flag.removeprefix('--').replace('-', '_')} ({flag}) is {teacher_samples},"
                    f" but teacher"
                    f" {self.teacher!r} allows at most {self.teacher_info.max_n} per request"
                )
        if self.verifier is not None:
            assert self.verifier_url is not None
            try:
                async with httpx.AsyncClient(
                    timeout=STARTUP_TIMEOUT_S, headers=self.verifier_headers
                ) as http:
                    ready = await http.get(self.verifier_url.rstrip("/") + "/readyz")
            except httpx.HTTPError as err:
                return (
                    f"cannot reach the verifier at {self.verifier_url} (--verifier):"
                    f" {type(err).__name__}: {err}"
                )
            if not ready.is_success:
                return (
                    f"the verifier at {self.verifier_url} (--verifier) is not ready:"
                    f" HTTP {ready.status_code} {ready.text[:200]}"
                )
        return None

    @property
    def teacher_max_tokens(self) -> int:
        return self.teacher_info.max_tokens if self.teacher_info else 512

    # -- steps 4 and 5 --------------------------------------------------------------------

    def teacher_and_scores(
        self,
        requests: list[TeacherRequest],
        drafts: dict[int, list[str]],
        *,
        temperature: float,
        score_settings: ScoreSettings,
        counters: Counters,
        prior_means: dict[int, list[float]] | None = None,
        teacher_rows: bool = False,
    ) -> concurrent.futures.Future[ForkScores]:
        """Start steps 4 and 5 for a step's forks in the background; the future holds scores.

        ``prior_means``: each fork's π̄ per draft, sent with prior ``likelihood``;
        ``teacher_rows``: also score the continuations against each other
        (:func:`.scores.score_as_replies_arrive`)."""
        assert self.client is not None and self.verifier is not None
        replies = stream_teacher(
            self.client,
            requests,
            teacher=self.teacher or "",
            temperature=temperature,
            counters=counters,
        )
        return self.io.submit(
            score_as_replies_arrive(
                replies,
                drafts,
                self.verifier,
                score_settings,
                policy=self.policy,
                counters=counters,
                prior_means=prior_means,
                teacher_rows=teacher_rows,
            )
        )

    async def sample_answers(
        self,
        prompts: list[str],
        *,
        n: int = 1,
        max_tokens: int,
        temperature: float,
        counters: Counters,
    ) -> list[TeacherReply]:
        """``n`` full teacher answers per prompt (``partial_answer`` empty), one stream (SFT)."""
        requests = [
            TeacherRequest(fork=i, prompt=p, partial_answer="", n=n, max_tokens=max_tokens)
            for i, p in enumerate(prompts)
        ]
        assert self.client is not None
        out = [
            r
            async for r in stream_teacher(
                self.client,
                requests,
                teacher=self.teacher or "",
                temperature=temperature,
                counters=counters,
            )
        ]
        return sorted(out, key=lambda r: r.fork)

    def close(self) -> None:
        """Close both clients and stop the I/O thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True

        async def _close() -> None:
            if self.verifier is not None:
                await self.verifier.aclose()
            if self.client is not None:
                await self.client.close()

        self.io.run(_close())
        self.io.close()
