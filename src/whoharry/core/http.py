"""The package's one HTTP client: a chat call to any OpenAI-compatible `/chat/completions` endpoint.

Used by the optional LLM judge (`evaluation.judges`) and the LLM route of `whoharry anchors suggest`.
Both are off by default; nothing else in whoharry reaches the network. The API key is read from the
environment variable a config names, sent as a bearer token, and never stored or logged.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

_sleep = time.sleep  # replaced in tests


@dataclass
class ChatClient:
    """One endpoint and model, asked one user message at a time, at temperature 0.

    Raises:
        WhoharryError: on construction, a timeout that is not positive or a negative `max_retries`.
    """

    base_url: str  # the API root, e.g. https://api.openai.com/v1 or a local server's
    model: str
    key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key
    timeout: float = 60.0  # seconds per request
    max_retries: int = 3  # extra attempts after HTTP 429/5xx or a connection error
    max_tokens: int | None = None  # a cap on the reply's length
    headers: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise WhoharryError(f"chat timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise WhoharryError(f"chat max_retries must be 0 or more, got {self.max_retries}")
        self.headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        else:
            log.info("$%s is not set: asking %s without an API key", self.key_env, self.url)

    @property
    def url(self) -> str:
        """`base_url` (trailing slashes removed) + `/chat/completions`."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def ask(self, content: str, what: str) -> str:
        """The reply's text (`choices[0].message.content`) to one user message.

        Args:
            content: the message.
            what: what is asked, for error messages ("item 3", "passage 2").

        Raises:
            WhoharryError: the endpoint refused the key (or needs one), answered an error that retrying
                cannot mend (HTTP 4xx other than 429) or something that is not JSON, failed after every
                retry (HTTP 429/5xx or connection errors, waiting 1, 2, 4 ... seconds between attempts),
                or answered without a message.
        """
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}],
                                "temperature": 0}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        answer = self._post(body)
        try:
            return str(answer["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise WhoharryError(f"{self.url} answer for {what} has no choices[0].message.content") from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON and return the JSON answer, retrying HTTP 429/5xx and connection errors with backoff."""
        url, data, problem = self.url, json.dumps(body).encode("utf-8"), ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    if "Authorization" not in self.headers:
                        raise WhoharryError(f"{url} needs an API key (HTTP {err.code}): set ${self.key_env}") from None
                    raise WhoharryError(f"{url} refused the API key in ${self.key_env} (HTTP {err.code})") from None
                if err.code != 429 and err.code < 500:
                    detail = err.read()[:200].decode("utf-8", "replace").replace("\n", " ")
                    raise WhoharryError(f"{url} answered HTTP {err.code} {err.reason}: {detail}") from None
                problem = f"HTTP {err.code} {err.reason}"
            except json.JSONDecodeError:
                raise WhoharryError(f"{url} answered with something that is not JSON") from None
            except (OSError, http.client.HTTPException) as err:
                problem = str(getattr(err, "reason", err)) or type(err).__name__
            if attempt < self.max_retries:
                delay = 2.0**attempt
                log.warning("%s: %s; retrying in %.0f s", url, problem, delay)
                _sleep(delay)
        raise WhoharryError(f"{url} failed after {self.max_retries + 1} attempt(s): {problem}")


def read_template(path: Path, placeholders: tuple[str, ...], what: str = "prompt template") -> str:
    """A prompt template (UTF-8) in which every one of `placeholders` appears as `{name}`.

    Raises:
        WhoharryError: the file is missing, or lacks one of the placeholders.
    """
    if not path.is_file():
        raise WhoharryError(f"{what} not found: {path}")
    text = path.read_text(encoding="utf-8")
    missing = [name for name in placeholders if "{" + name + "}" not in text]
    if missing:
        raise WhoharryError(f"{path}: {what} lacks the placeholder(s) " + ", ".join("{" + m + "}" for m in missing))
    return text


def fill_template(template: str, values: dict[str, str]) -> str:
    """`template` with each `{name}` of `values` replaced in one pass, so braces in the values (and any
    other braces of the template) stay as they are."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda match: values[match.group(1)], template)
