"""Robot-side client of the policy server: the `infer` interface of a local policy, over the network.

Imports numpy, msgpack and websockets only (no torch, no transformers), so the robot PC needs
none of the training stack. A dropped connection is re-opened on the next request (with a
short back-off); a server that stays away raises ConnectionError, which the control loop
treats like a failed inference: it holds the arm and stops after safety.policy_timeout_s.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from vla.deploy.protocol import ObservationMessage, PolicySpec, blank_observation, pack, unpack

log = logging.getLogger(__name__)


class RemotePolicy:
    def __init__(self, url: str, token: str, timeout_s: float = 5.0, max_message_mb: float = 8.0,
                 retries: int = 3):
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"policy server address must look like ws://HOST:PORT; got {url!r}")
        self.url, self.token, self.timeout_s = url, token, timeout_s
        self.max_bytes = int(max_message_mb * 2**20)
        self.retries = retries
        self._connection: ClientConnection | None = None
        self.spec = PolicySpec.from_dict(self._request({"type": "spec"})["spec"])

    def infer(self, obs: ObservationMessage) -> np.ndarray:
        reply = self._request({"type": "infer", "observation": obs.to_dict()})
        return reply["actions"]

    def warmup(self) -> None:
        """One request with a blank observation: opens the connection and warms the server's policy up."""
        self.infer(blank_observation(self.spec))

    def health(self) -> dict:
        return self._request({"type": "health"})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, message: dict) -> dict:
        payload = pack(message)
        error: Exception | None = None
        for attempt in range(self.retries):
            try:
                connection = self._connect()
                connection.send(payload)
                reply = unpack(connection.recv(timeout=self.timeout_s))
                break
            except PermissionError:
                raise
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                error = exc
                self.close()
                log.warning("policy server %s: %s (attempt %d/%d)", self.url, exc, attempt + 1, self.retries)
                time.sleep(0.1 * 2**attempt)
        else:
            raise ConnectionError(f"policy server {self.url} unreachable after {self.retries} attempts: {error}")
        if reply["type"] == "error":
            raise RuntimeError(f"policy server refused the request: {reply['message']}")
        return reply

    def _connect(self) -> ClientConnection:
        if self._connection is None:
            try:
                self._connection = connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                                           max_size=self.max_bytes, open_timeout=self.timeout_s)
            except InvalidStatus as exc:
                raise PermissionError(f"policy server {self.url} refused the connection "
                                      f"(HTTP {exc.response.status_code}): check the shared token") from exc
        return self._connection
