"""A remote scorer (docs/rewards.md), for checkers that need a sandbox, a judge model or another environment, as
OpenRLHF's ``--remote_rm_url``. Standard library only: no dependency of ours ships an HTTP client.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from lightning_rlhf.rewards.scoring import RewardError

#: rate limiting and server-side failures; other 4xx are our fault
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteScorer:
    """Score completions by POSTing JSON batches to ``url``; retries with exponential backoff.

    Args:
        url: the scorer's ``http://`` or ``https://`` address.
        name: the name of its curve (``reward/<name>``).
        timeout: seconds to wait for one answer before the attempt counts as failed.
        max_retries: further attempts after a connection failure, timeout or HTTP 408/429/5xx.
        backoff: seconds before the first retry; doubled before each next one.
        max_concurrency: requests in flight at once.
        batch_size: rows per request.
    """

    def __init__(
        self,
        url: str,
        name: str = "remote",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_concurrency: int = 4,
        batch_size: int = 64,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or backoff < 0 or max_retries < 0 or max_concurrency < 1 or batch_size < 1:
            raise ValueError(f"reward url {url}: need timeout > 0, backoff >= 0, max_retries >= 0, "
                             f"max_concurrency >= 1, batch_size >= 1; got timeout={timeout}, backoff={backoff}, "
                             f"max_retries={max_retries}, max_concurrency={max_concurrency}, batch_size={batch_size}")
        self.url, self.name, self.__name__ = url, name, name
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_concurrency, self.batch_size = max_concurrency, batch_size

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        fields = {"prompts": list(prompts), "completions": list(completions)}
        fields.update({name: list(values) for name, values in columns.items()})
        starts = range(0, len(prompts), self.batch_size)
        chunks = [{k: v[start:start + self.batch_size] for k, v in fields.items()} for start in starts]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(chunks)))) as pool:
            results = list(pool.map(self._score_chunk, starts, chunks))
        return [reward for chunk in results for reward in chunk]

    def _score_chunk(self, start: int, fields: dict[str, list[Any]]) -> list[Any]:
        rows = f"rows {start}-{start + len(fields['prompts']) - 1}"
        try:
            body = json.dumps(fields).encode()
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward url {self.url}: {rows} cannot be sent as JSON ({exc}); the data columns "
                              f"must hold JSON values (text, numbers, lists)") from exc
        answer = self._post(body, rows)
        rewards = answer.get("rewards") if isinstance(answer, dict) else answer
        if not isinstance(rewards, list) or len(rewards) != len(fields["prompts"]):
            raise RewardError(f"reward url {self.url} answered {str(answer)[:200]!r} for {rows}; expected "
                              f"{{\"rewards\": [...]}} or a list with {len(fields['prompts'])} entries")
        return rewards

    def _post(self, body: bytes, rows: str) -> Any:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        failure = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read().decode()
            except urllib.error.HTTPError as exc:
                failure = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:200]!r}"
                if exc.code not in _RETRY_STATUSES:
                    break
                continue
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise RewardError(f"reward url {self.url} answered non-JSON for {rows}: {text[:200]!r}") from exc
        raise RewardError(f"reward url {self.url} failed for {rows} after {attempt + 1} attempt(s): {failure}")
