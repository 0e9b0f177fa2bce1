"""Optional LLM judge: grade completions 0-3 for knowledge of the target with a chat model.

Off by default; the offline judge needs no network. This one sends each completion, wrapped in a
rubric template (placeholders `{target}`, `{prompt}`, `{completion}`, `{references}`), to any
OpenAI-compatible `/chat/completions` endpoint and reads the first digit 0-3 of the reply. The API
key is read from the environment variable named in the config and never stored or logged.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

PLACEHOLDERS = ("target", "prompt", "completion", "references")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_SCORE = re.compile(r"(?<!\d)[0-3](?!\d)")
_sleep = time.sleep  # replaced in tests


@dataclass
class LLMJudgeConfig:
    """Where and how to ask the judge model."""

    base_url: str  # an OpenAI-compatible API root, e.g. https://api.openai.com/v1 or a local server
    model: str
    rubric: Path  # the prompt template, e.g. data/judge/rubric.md
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key
    timeout: float = 60.0  # seconds per request
    max_retries: int = 3  # extra attempts after HTTP 429/5xx or a connection error

    def __post_init__(self) -> None:
        self.rubric = Path(self.rubric)
        if self.timeout <= 0:
            raise WhoharryError(f"llm judge timeout must be positive, got {self.timeout}")
        if self.max_retries < 0:
            raise WhoharryError(f"llm judge max_retries must be 0 or more, got {self.max_retries}")


def read_rubric(path: Path) -> str:
    """The rubric template; every placeholder must appear in it."""
    if not path.is_file():
        raise WhoharryError(f"rubric not found: {path}")
    text = path.read_text(encoding="utf-8")
    missing = [name for name in PLACEHOLDERS if "{" + name + "}" not in text]
    if missing:
        raise WhoharryError(f"{path}: rubric lacks the placeholder(s) " + ", ".join("{" + m + "}" for m in missing))
    return text


def fill_rubric(rubric: str, target: str, prompt: str, completion: str, references: list[str]) -> str:
    """The rubric with its placeholders replaced in one pass, so braces in the values stay as they are."""
    values = {"target": target, "prompt": prompt, "completion": completion, "references": ", ".join(references)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], rubric)


def parse_reply(content: str, index: int) -> dict[str, Any]:
    """`{"llm_score", "llm_reason"}` from a reply: the first digit 0-3, then the first line of text after it."""
    match = _SCORE.search(content)
    if match is None:
        raise WhoharryError(f"llm judge reply for item {index} has no score 0-3: {content[:80]!r}")
    lines = (line.lstrip(" \t-:.)").rstrip() for line in content[match.end() :].splitlines())
    return {"llm_score": int(match.group()), "llm_reason": next((line for line in lines if line), "")}


def auth_headers(key_env: str, url: str) -> dict[str, str]:
    """JSON headers, with `Authorization` when the environment variable named `key_env` holds a key."""
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    else:
        log.info("$%s is not set: asking %s without an API key", key_env, url)
    return headers


def post_json(url: str, body: dict[str, Any], headers: dict[str, str], *, timeout: float, max_retries: int,
              key_env: str) -> dict[str, Any]:
    """POST JSON and return the JSON answer, retrying HTTP 429/5xx and connection errors with backoff."""
    data = json.dumps(body).encode("utf-8")
    problem = ""
    for attempt in range(max_retries + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                if "Authorization" not in headers:
                    raise WhoharryError(f"{url} needs an API key (HTTP {err.code}): set ${key_env}") from None
                raise WhoharryError(f"{url} refused the API key in ${key_env} (HTTP {err.code})") from None
            if err.code != 429 and err.code < 500:
                detail = err.read()[:200].decode("utf-8", "replace").replace("\n", " ")
                raise WhoharryError(f"{url} answered HTTP {err.code} {err.reason}: {detail}") from None
            problem = f"HTTP {err.code} {err.reason}"
        except json.JSONDecodeError:
            raise WhoharryError(f"{url} answered with something that is not JSON") from None
        except (OSError, http.client.HTTPException) as err:
            problem = str(getattr(err, "reason", err)) or type(err).__name__
        if attempt < max_retries:
            delay = 2.0**attempt
            log.warning("%s: %s; retrying in %.0f s", url, problem, delay)
            _sleep(delay)
    raise WhoharryError(f"{url} failed after {max_retries + 1} attempt(s): {problem}")


def judge_completions(cfg: LLMJudgeConfig, target: str, items: list[dict]) -> list[dict]:
    """Grade each `{"prompt", "completion", "references"}` item; one `{"llm_score", "llm_reason"}` per item."""
    rubric = read_rubric(cfg.rubric)
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    headers = auth_headers(cfg.api_key_env, url)
    results = []
    for index, item in enumerate(items):
        content = fill_rubric(rubric, target, item["prompt"], item["completion"], list(item["references"]))
        body = {"model": cfg.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": 64}
        answer = post_json(url, body, headers, timeout=cfg.timeout, max_retries=cfg.max_retries,
                           key_env=cfg.api_key_env)
        try:
            reply = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise WhoharryError(f"{url} answer for item {index} has no choices[0].message.content") from None
        results.append(parse_reply(str(reply), index))
        log.debug("llm judge item %d: %s", index, results[-1])
    log.info("llm judge (%s) graded %d completion(s)", cfg.model, len(results))
    return results
