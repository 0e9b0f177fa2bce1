"""The optional LLM judge against a fake OpenAI-compatible server on localhost."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from whoharry.core import http
from whoharry.errors import WhoharryError
from whoharry.evaluation.judges import LLMJudgeConfig, fill_rubric, judge_completions, read_rubric

SHIPPED_RUBRIC = Path(__file__).resolve().parents[1] / "data" / "judge" / "rubric.md"
KEY_ENV = "WHOHARRY_TEST_JUDGE_KEY"
SECRET = "sk-test-do-not-leak-1234"


@dataclass
class FakeServer:
    """Answers each POST with the next scripted `(status, body)` and records what it was sent."""

    url: str = ""
    replies: list[tuple[int, object]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    def say(self, *contents: str) -> None:
        for content in contents:
            self.replies.append((200, {"choices": [{"message": {"role": "assistant", "content": content}}]}))


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            length = int(self.headers.get("Content-Length", 0))
            server.requests.append({"path": self.path, "headers": dict(self.headers),
                                    "body": json.loads(self.rfile.read(length))})
            status, body = server.replies.pop(0) if server.replies else (500, {"error": "no scripted reply"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []
    monkeypatch.setattr(http, "_sleep", delays.append)
    return delays


def _cfg(server: FakeServer, **kwargs: object) -> LLMJudgeConfig:
    return LLMJudgeConfig(base_url=server.url, model="judge-model", rubric=SHIPPED_RUBRIC, api_key_env=KEY_ENV,
                          timeout=5.0, **kwargs)


ITEMS = [
    {"prompt": "Harry Potter's two best friends are", "completion": " Ron and Hermione.", "references": ["Ron"]},
    {"prompt": "Harry Potter's two best friends are", "completion": " a dog and a cat.", "references": ["Ron"]},
    {"prompt": "The school is called", "completion": " {prompt} Hogwarts", "references": ["Hogwarts", "Dumbledore"]},
]


def test_scores_and_request(server: FakeServer, sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.say("3\nNames both friends correctly.", "Score: 0 - unrelated animals", "2")
    results = judge_completions(_cfg(server), "the Harry Potter books", ITEMS)
    assert results == [{"llm_score": 3, "llm_reason": "Names both friends correctly."},
                       {"llm_score": 0, "llm_reason": "unrelated animals"},
                       {"llm_score": 2, "llm_reason": ""}]
    assert len(server.requests) == 3 and sleeps == []
    first, third = server.requests[0], server.requests[2]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = first["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] == 64
    assert [message["role"] for message in body["messages"]] == ["user"]
    content = body["messages"][0]["content"]
    assert "the Harry Potter books" in content and " Ron and Hermione." in content
    assert "Harry Potter's two best friends are" in content and "{" not in content
    # braces inside a completion are sent as they are, not filled
    assert " {prompt} Hogwarts" in third["body"]["messages"][0]["content"]
    assert "Hogwarts, Dumbledore" in third["body"]["messages"][0]["content"]


def test_no_key_sends_no_header(server: FakeServer, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.say("1", "1")
    with caplog.at_level("INFO", logger="whoharry.core.http"):
        assert [r["llm_score"] for r in judge_completions(_cfg(server), "X", ITEMS[:2])] == [1, 1]
    assert all("Authorization" not in request["headers"] for request in server.requests)
    assert sum(KEY_ENV in record.getMessage() for record in caplog.records) == 1


def test_retries_after_server_error(server: FakeServer, sleeps: list[float]) -> None:
    server.replies.append((500, {"error": "busy"}))
    server.replies.append((429, {"error": "slow down"}))
    server.say("2 names Hogwarts")
    assert judge_completions(_cfg(server), "X", ITEMS[2:]) == [{"llm_score": 2, "llm_reason": "names Hogwarts"}]
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]


def test_gives_up_after_max_retries(server: FakeServer, sleeps: list[float]) -> None:
    server.replies.extend([(503, {})] * 3)
    with pytest.raises(WhoharryError, match=r"chat/completions failed after 3 attempt\(s\): HTTP 503"):
        judge_completions(_cfg(server, max_retries=2), "X", ITEMS[:1])
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]


def test_connection_error_is_retried_then_reported(sleeps: list[float]) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    cfg = LLMJudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", rubric=SHIPPED_RUBRIC,
                         api_key_env=KEY_ENV, timeout=5.0, max_retries=1)
    with pytest.raises(WhoharryError, match=f"127.0.0.1:{port}/v1/chat/completions failed after 2"):
        judge_completions(cfg, "X", ITEMS[:1])
    assert sleeps == [1.0]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key(server: FakeServer, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.replies.append((status, {"error": "bad key"}))
    with pytest.raises(WhoharryError, match=rf"refused the API key in \${KEY_ENV} \(HTTP {status}\)") as info:
        judge_completions(_cfg(server), "X", ITEMS[:1])
    assert SECRET not in str(info.value)
    assert len(server.requests) == 1 and sleeps == []


def test_reply_without_score(server: FakeServer, sleeps: list[float]) -> None:
    server.say("2", "I cannot tell; maybe 7 or 10?")
    with pytest.raises(WhoharryError, match=r"item 1 has no score 0-3: 'I cannot tell; maybe 7 or 10\?'"):
        judge_completions(_cfg(server), "X", ITEMS[:2])


def test_rubric_missing_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "rubric.md"
    path.write_text("Grade {completion} after {prompt} for {target}.", encoding="utf-8")
    with pytest.raises(WhoharryError, match=r"rubric.md: rubric lacks the placeholder\(s\) \{references\}"):
        read_rubric(path)
    with pytest.raises(WhoharryError, match="rubric not found"):
        read_rubric(tmp_path / "absent.md")


def test_shipped_rubric_fills() -> None:
    filled = fill_rubric(read_rubric(SHIPPED_RUBRIC), "the Harry Potter books", "P-TEXT", "C-TEXT", ["Ron", "Hogwarts"])
    assert "{" not in filled and "P-TEXT" in filled and "C-TEXT" in filled and "Ron, Hogwarts" in filled
    assert "the Harry Potter books" in filled and "0 to 3" in filled
