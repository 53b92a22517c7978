"""Policy server: the policy on a GPU box, the control loop on the robot PC.

    export VLA_SERVER_TOKEN=$(openssl rand -hex 16)   # the same token on both machines
    vla-serve --checkpoint outputs/train/quickstart/checkpoints/last --port 8765 [--host 0.0.0.0]

WebSocket + msgpack (vla.deploy.protocol; no pickle). One binary request per observation, one
chunk per reply. The server binds 127.0.0.1 unless told otherwise, refuses connections without
the shared token (HTTP 401 before the WebSocket opens), caps message size, validates every
field against the policy's observation spec, and answers a bad request with an error message
while staying up. Inference runs in a worker thread, so the event loop keeps answering health
checks from other connections while a chunk is computed (openpi's server blocks its loop).
An inference that runs past `inference_timeout_s` is answered with an error; while it is still
stuck, every inference request gets an error at once and health reports `healthy: false`. A client
that stops answering keepalive pings (e.g. stalled in the middle of a message) is dropped within
2 x `client_timeout_s`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from vla.deploy.protocol import ProtocolError, pack, unpack, validate_observation

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    checkpoint: str = ""  # a checkpoint folder or a hub id
    revision: str = ""  # with a hub id: the branch, tag or commit to load ("" = main)
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server to the network: do it on a trusted LAN only
    port: int = 8765
    token_env: str = "VLA_SERVER_TOKEN"
    max_message_mb: float = 8.0  # bigger requests close the connection (WebSocket code 1009)
    num_inference_steps: int = 0  # 0 = the checkpoint's default
    bac: bool = False  # block caching with the checkpoint's schedule (vla-eval calibrate-bac); off unless asked
    device: str = ""  # "" = cuda when available, else cpu
    inference_timeout_s: float = 10.0  # an inference running longer is answered with an error; health: unhealthy
    client_timeout_s: float = 10.0  # keepalive: a client that does not answer a ping within this is dropped


class PolicyUnavailable(Exception):
    """The policy cannot take requests now (an earlier inference is hung, or none finished in time)."""


class PolicyServer:
    """Serves `policy` (anything with `.spec` and `.infer(ObservationMessage) -> [H, D]`)."""

    def __init__(self, policy, token: str, host: str = "127.0.0.1", port: int = 8765, max_message_mb: float = 8.0,
                 inference_timeout_s: float = 10.0, client_timeout_s: float = 10.0):
        if len(token) < 8:
            raise ValueError("the server token must be at least 8 characters")
        if inference_timeout_s <= 0 or client_timeout_s <= 0:
            raise ValueError(f"inference_timeout_s and client_timeout_s must be positive; got {inference_timeout_s}, "
                             f"{client_timeout_s}")
        self.policy, self.token, self.host, self.port = policy, token, host, port
        self.max_bytes = int(max_message_mb * 2**20)
        self.inference_timeout_s, self.client_timeout_s = inference_timeout_s, client_timeout_s
        self.busy = False
        self.served = 0
        self.hung: str | None = None  # why the policy is unavailable while an inference is stuck
        self._infer_lock = asyncio.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # (observation, event loop, future) for the thread
        self._inference_thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> None:
        timeout = self.client_timeout_s
        async with serve(self._handle, self.host, self.port, max_size=self.max_bytes, process_request=self._authorise,
                         ping_interval=timeout, ping_timeout=timeout, close_timeout=timeout) as server:
            self._server, self._loop = server, asyncio.get_running_loop()
            self.port = server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
            log.info("policy server on ws://%s:%d", self.host, self.port)
            self._ready.set()
            try:
                await server.serve_forever()
            except asyncio.CancelledError:  # shutdown() closed the server
                log.info("policy server on port %d stopped", self.port)

    def start_in_thread(self) -> PolicyServer:
        """Serve from a daemon thread (tests, benchmarks); returns once the port is bound."""
        threading.Thread(target=lambda: asyncio.run(self.serve()), name="policy-server", daemon=True).start()
        if not self._ready.wait(10):
            raise RuntimeError(f"policy server did not start on {self.host}:{self.port}")
        return self

    def shutdown(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._server.close)

    def _authorise(self, connection: ServerConnection, request):
        given = request.headers.get_all("Authorization")
        if len(given) == 1 and hmac.compare_digest(given[0].encode(), f"Bearer {self.token}".encode()):
            return None
        log.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")

    async def _handle(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        try:
            async for payload in connection:
                await connection.send(pack(await self._reply(payload)))
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == 1009:
                log.warning("%s sent a message over %d bytes; connection closed", peer, self.max_bytes)

    async def _reply(self, payload) -> dict:
        try:
            message = unpack(payload)
            kind = message["type"]
            if kind == "health":
                return {"type": "health", "busy": self.busy, "served": self.served, "healthy": self.hung is None,
                        "problem": self.hung or ""}
            if kind == "spec":
                return {"type": "spec", "spec": self.policy.spec.to_dict()}
            if kind == "infer":
                return await self._infer(message)
            raise ProtocolError(f"unknown message type {kind!r}; expected infer, spec or health")
        except ProtocolError as error:
            log.warning("bad request: %s", error)
            return {"type": "error", "message": str(error)}
        except PolicyUnavailable as error:
            return {"type": "error", "message": str(error)}
        except Exception as error:  # anything else a request can trigger: answer it, keep the connection and server
            log.exception("request failed")
            return {"type": "error", "message": f"bad request: {type(error).__name__}: {error}"}

    async def _infer(self, message: dict) -> dict:
        observation = validate_observation(message.get("observation"), self.policy.spec)
        self._check_available()
        start = time.perf_counter()
        try:  # one inference at a time; other connections queue here, at most inference_timeout_s
            await asyncio.wait_for(self._infer_lock.acquire(), self.inference_timeout_s)
        except TimeoutError:
            raise PolicyUnavailable(f"the server is busy: no inference finished within inference_timeout_s="
                                    f"{self.inference_timeout_s:g}") from None
        try:
            self._check_available()
            self.busy = True
            running = self._start_inference(observation)
            try:  # a hang is judged from the inference's own start: time queued above does not count
                actions = await asyncio.wait_for(asyncio.shield(running), self.inference_timeout_s)
            except TimeoutError:
                self.hung = (f"an inference has run past inference_timeout_s={self.inference_timeout_s:g}; the policy "
                             f"takes no requests until it returns")
                log.error("policy hung: %s", self.hung)
                running.add_done_callback(self._recovered)
                raise PolicyUnavailable(self.hung) from None
            except Exception as error:  # the policy failed on this input: report it, keep serving
                log.exception("policy failed")
                return {"type": "error", "message": f"policy failed: {type(error).__name__}: {error}"}
            finally:
                self.busy = self.hung is not None
        finally:
            self._infer_lock.release()
        self.served += 1
        return {"type": "chunk", "actions": actions, "latency_ms": (time.perf_counter() - start) * 1000}

    def _check_available(self) -> None:
        if self.hung is not None:
            raise PolicyUnavailable(f"policy unavailable: {self.hung}")

    def _start_inference(self, observation) -> asyncio.Future:
        """Hand policy.infer to the inference thread; the future settles with its answer or its error."""
        if self._inference_thread is None:
            # one persistent thread: a new thread per call pays torch's per-thread start-up (an OpenMP team) on
            # every request; a daemon, so a hung policy does not keep the process alive at exit
            self._inference_thread = threading.Thread(target=self._run_inferences, name="inference", daemon=True)
            self._inference_thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((observation, loop, future))
        return future

    def _run_inferences(self) -> None:
        """The inference thread: one job at a time (the lock and the hung state keep the queue at most one deep)."""
        while True:
            observation, loop, future = self._jobs.get()
            try:
                result, error = self.policy.infer(observation), None
            except BaseException as exc:  # anything (even SystemExit in the policy) must settle the future
                result = None
                error = exc if isinstance(exc, Exception) else RuntimeError(f"{type(exc).__name__}: {exc}")
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the server's event loop is gone
                pass

    def _recovered(self, _future) -> None:
        log.warning("the hung inference returned; the policy takes requests again")
        self.hung = None
        self.busy = False


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(result)


def main(args: list[str] | None = None) -> None:
    import draccus
    import torch

    from vla.deploy.runner import LocalPolicy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = draccus.parse(ServerConfig, args=args)
    token = os.environ.get(cfg.token_env, "")
    if not token:
        raise SystemExit(f"set a shared token in ${cfg.token_env} first, e.g. export {cfg.token_env}=$(openssl rand "
                         "-hex 16), and give the robot PC the same one")
    if not cfg.checkpoint:
        raise SystemExit("vla-serve needs --checkpoint PATH")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = LocalPolicy.from_checkpoint(cfg.checkpoint, revision=cfg.revision or None,
                                         num_steps=cfg.num_inference_steps or None, device=device, bac=cfg.bac)
    policy.warmup()
    asyncio.run(PolicyServer(policy, token, cfg.host, cfg.port, cfg.max_message_mb, cfg.inference_timeout_s,
                             cfg.client_timeout_s).serve())


if __name__ == "__main__":
    main()
