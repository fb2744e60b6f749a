"""WebSocket close reasons (router.hrana.ws.close): a code-like word first, cut at a word with an
ellipsis to fit the 123 bytes of a close frame, never inside a UTF-8 character; and a Hrana
session's reasons are built so (a long protocol error is cut at a word, its code first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.hrana.ws.close import ELLIPSIS, MAX_REASON_BYTES, close_reason, error_reason, fitted
from tenants.errors import ReplicaUnavailable
from tests.support.websocket import hrana_socket, live_server


def whole_words_of(reason: str, text: str) -> bool:
    """Whether `reason` is `text` cut after a whole word, with an ellipsis."""
    head = reason.removesuffix(ELLIPSIS)
    return reason.endswith(ELLIPSIS) and text.startswith(head) and text[len(head)] in " ,:;.-("


def test_a_short_reason_is_kept_as_it_is() -> None:
    assert close_reason("PROTOCOL_ERROR", "stream 7 is not open") == "PROTOCOL_ERROR: stream 7 is not open"
    exact = "x" * MAX_REASON_BYTES
    assert fitted(exact) == exact


@pytest.mark.parametrize("word", ["a", "ab", "abc", "éé", "日本", "🙂"])
def test_a_long_reason_is_cut_at_a_word_within_the_frame(word: str) -> None:
    text = " ".join(f"{word}{i}" for i in range(200))
    reason = close_reason("replica_unavailable", text)
    assert len(reason.encode()) <= MAX_REASON_BYTES, reason
    assert reason.startswith("replica_unavailable: ")
    assert whole_words_of(reason, f"replica_unavailable: {text}"), reason
    assert len(reason.encode()) > MAX_REASON_BYTES - len(f"{word}199 ".encode()) - len(ELLIPSIS), reason


def test_a_cut_that_falls_between_words_keeps_the_last_word() -> None:
    text = "a" * 110 + " tail abcd and more words after it"  # 120 bytes up to "abcd", then a space
    reason = fitted(text)
    assert reason == "a" * 110 + " tail abcd" + ELLIPSIS


def test_one_word_longer_than_the_frame_is_cut_inside_it_but_not_inside_a_character() -> None:
    reason = fitted("é" * 200)
    assert reason.endswith(ELLIPSIS) and len(reason.encode()) <= MAX_REASON_BYTES
    assert set(reason.removesuffix(ELLIPSIS)) == {"é"}


def test_an_error_reason_says_its_code_first_and_what_to_do_within_the_frame() -> None:
    error = ReplicaUnavailable(
        "the write's outcome is unknown, read it back before retrying: it is committed on this "
        "server but not in the backup replica (tenant 'a': the backup replica could not be reached)"
    )
    reason = error_reason(error)
    essential = "replica_unavailable: the write's outcome is unknown, read it back before retrying"
    assert reason.startswith(essential), reason
    assert len(reason.encode()) <= MAX_REASON_BYTES and reason.endswith(ELLIPSIS), reason


def test_a_session_closes_with_a_long_protocol_error_cut_at_a_word(tmp_path: Path) -> None:
    kind = " ".join(["ünknown"] * 40)  # the server quotes the client's text: long, and not ASCII
    with live_server(tmp_path / "data", backups=False) as live:
        live.create("a")
        with hrana_socket(live.ws_url + "/v1/tenants/a") as s:
            assert s.hello(live.token("a"))["type"] == "hello_ok"
            s.send({"type": kind})
            code, reason = s.closed_with()
    assert code == 1008 and reason is not None, reason
    assert reason.startswith("PROTOCOL_ERROR: ") and len(reason.encode()) <= MAX_REASON_BYTES, reason
    assert whole_words_of(reason, f"PROTOCOL_ERROR: unknown message type {kind!r}"), reason
