"""COPY IN and reply attribution, both directions fed without sockets.

The server ignores Sync while in COPY IN, so whether a Sync opened a response group
depends on where the server was when it read it. The frontend guesses from the client's
CopyDone/CopyFail; the backend confirms each guess from the server's CopyInResponse and
the COPY's end, or gives attribution up: certain or nothing. These tests play the
server's real answers (as PostgreSQL sends them) against the client's bytes.
"""

from __future__ import annotations

import pytest

from proxy.streams import (
    ATTRIBUTION_LOST,
    SESSION_ENDED,
    BackendStream,
    FrontendStream,
    Rewrite,
    SessionState,
)
from proxy.wire import AttributionLost, ProtocolViolation, command_complete, message, query
from proxy.wire import ready_for_query as ready
from tests.rawpg import (
    COPY_DONE,
    COPY_FAIL,
    FLUSH,
    SYNC,
    bind,
    copy_data,
    describe_statement,
    execute,
    parse,
)
from tests.unit.ran_plan import RanPlan

pytestmark = pytest.mark.usefixtures("stream_build")

COPY_IN = message(b"G", b"\0\0\0")
CLEAN_TEXT = b"clean connection to all"
DO = b"DO $$begin perform 1; end$$"
CLEAN_TAG = command_complete(b"CLEAN CONNECTION")


def error(sqlstate: bytes = b"22P02") -> bytes:
    return message(b"E", b"SERROR\0C" + sqlstate + b"\0Mbad\0\0")


PARSE_COMPLETE = message(b"1", b"")
BIND_COMPLETE = message(b"2", b"")


class Dialect:
    """Rewrites exactly CLEAN_TEXT into DO, planned as a CLEAN; records outcomes."""

    statements = "fake CLEAN statements"

    def __init__(self) -> None:
        self.outcomes: list[object] = []

    def might_rewrite(self, body: bytes) -> bool:
        return b"clean" in body.lower()

    def might_redefine(self, body: bytes) -> bool:
        return False

    def scanner(self, state: SessionState, start: int, tracking: bool):  # type: ignore[no-untyped-def]
        return _Whole(start)

    def rewrite(self, buf, start, end, scan, state, settled) -> Rewrite | None:  # type: ignore[no-untyped-def]
        if bytes(buf[start:end]) != CLEAN_TEXT:
            return None
        return Rewrite(DO, ((0, RanPlan("clean")),))

    def outcome(self, session, shaped, error) -> None:  # type: ignore[no-untyped-def]
        self.outcomes.append(error)


class _Whole:
    def __init__(self, start: int) -> None:
        self.start, self.found = start, False

    def feed(self, buf: bytes | bytearray, limit: int) -> bool:
        self.found = b"clean" in bytes(buf[self.start : limit]).lower()
        return True


class Session:
    """Both streams of one ready session (the startup group answered)."""

    def __init__(self) -> None:
        self.dialect = Dialect()
        self.state = SessionState()
        self.state.authenticated = self.state.ready = True
        self.state.answering_group = 0
        self.frontend = FrontendStream(self.state, max_message_size=1 << 20, dialect=self.dialect)
        self.backend = BackendStream(
            self.state, lambda shaping, error: self.dialect.outcome(None, shaping, error)
        )

    def client(self, *messages: bytes) -> bytes:
        return b"".join(bytes(c) for c in self.frontend.feed(b"".join(messages)))

    def server(self, *messages: bytes) -> bytes:
        return b"".join(bytes(c) for c in self.backend.feed(b"".join(messages)))

    def clean_is_shaped(self) -> None:
        """A CLEAN sent now is rewritten and its reply shaped."""
        assert self.client(query(CLEAN_TEXT)) == query(DO)
        assert self.server(command_complete(b"DO"), ready()) == CLEAN_TAG + ready()
        assert self.dialect.outcomes[-1] is None
        assert not self.state.queue

    def clean_is_passed_through(self) -> None:
        """Attribution was given up: a CLEAN goes to the server as it is (its syntax error)."""
        assert self.state.attribution_lost
        assert self.client(query(CLEAN_TEXT)) == query(CLEAN_TEXT)
        assert not self.state.queue


def extended_copy() -> bytes:
    """libpq's extended-protocol COPY: Parse/Bind/Execute and a Sync it sends not knowing."""
    return parse(b"", b"copy t from stdin") + bind(b"", b"") + execute() + SYNC


def test_libpq_extended_copy_guess_is_confirmed() -> None:
    session = Session()
    session.client(extended_copy())
    session.server(PARSE_COMPLETE, BIND_COMPLETE, COPY_IN)
    session.client(copy_data(b"1\n"), COPY_DONE, SYNC)
    assert session.state.copy_guesses == [(0, 0)]
    session.server(command_complete(b"COPY 1"), ready())
    assert not session.state.copy_guesses and not session.state.attribution_lost
    session.clean_is_shaped()


@pytest.mark.parametrize("ending", [COPY_DONE, COPY_FAIL], ids=["copydone", "copyfail"])
def test_copy_end_after_an_answered_sync_is_known_at_once(ending: bytes) -> None:
    """The Sync's group was answered before the CopyDone came: no COPY reads it."""
    session = Session()
    session.client(query(b"select 1"), SYNC)
    session.server(command_complete(b"SELECT 1"), ready(), ready())
    session.client(ending)
    assert session.state.groups_sent == 2 and not session.state.copy_guesses
    session.clean_is_shaped()


def test_copy_done_outside_copy_is_refuted_by_the_server() -> None:
    """Sync and CopyDone together, before any answer: the guess is taken, then refuted
    by the Sync's ReadyForQuery (no CopyInResponse came)."""
    session = Session()
    session.client(query(b"select 1"), SYNC, COPY_DONE)
    assert session.state.copy_guesses == [(0, -1)]
    session.server(command_complete(b"SELECT 1"), ready(), ready())
    session.clean_is_passed_through()


def test_second_copy_done_after_a_completed_copy_guesses_nothing() -> None:
    """Only the first CopyDone after an Execute can end its COPY: later Syncs are real."""
    session = Session()
    session.client(parse(b"", b"copy t from stdin"), bind(b"", b""), execute())
    session.client(COPY_DONE, SYNC, COPY_DONE)
    assert session.state.groups_sent == 1 and not session.state.copy_guesses
    session.server(PARSE_COMPLETE, BIND_COMPLETE, COPY_IN, command_complete(b"COPY 0"), ready())
    session.clean_is_shaped()


def test_simple_copy_failing_on_its_data_without_further_messages_is_certain() -> None:
    """psql's COPY: Query, data, the server's error; nothing else was sent."""
    session = Session()
    session.client(query(b"copy t from stdin"))
    session.server(COPY_IN)
    session.client(copy_data(b"x\n"))
    session.server(error(), ready())
    session.client(COPY_DONE)
    assert not session.state.attribution_lost
    session.clean_is_shaped()


def test_sync_in_simple_copy_then_a_data_error_gives_attribution_up() -> None:
    """The server may or may not have read the Sync before the error."""
    session = Session()
    session.client(query(b"copy t from stdin"))
    session.server(COPY_IN)
    session.client(SYNC, copy_data(b"x\n"))
    session.server(error(), ready())
    session.clean_is_passed_through()


def test_extended_copy_failing_gives_attribution_up() -> None:
    """libpq's Sync after the Execute was sent: whether the server read it in COPY IN
    depends on where the COPY failed."""
    session = Session()
    session.client(extended_copy())
    session.server(PARSE_COMPLETE, BIND_COMPLETE, COPY_IN, error(), ready())
    session.client(COPY_DONE, SYNC)
    session.clean_is_passed_through()


def test_extended_copy_failing_before_its_sync_was_sent_is_certain() -> None:
    session = Session()
    session.client(parse(b"", b"copy t from stdin"), bind(b"", b""), execute())
    session.server(PARSE_COMPLETE, BIND_COMPLETE, COPY_IN, error())
    session.client(SYNC)
    session.server(ready())
    assert not session.state.attribution_lost
    session.clean_is_shaped()


def test_clean_sent_behind_an_uncertain_copy_is_reported_unknown_and_ends_the_session() -> None:
    session = Session()
    session.client(query(b"copy t from stdin"))
    session.server(COPY_IN)
    assert session.client(SYNC, copy_data(b"x\n"), query(CLEAN_TEXT)).endswith(query(DO))
    with pytest.raises(AttributionLost):
        session.server(error(), ready())
    assert session.dialect.outcomes == [ATTRIBUTION_LOST]
    assert not session.state.queue


def test_message_boundary_is_kept_when_attribution_is_lost_mid_message() -> None:
    """A read that continues a message the client was partly sent: no reply of ours
    may land inside it, so the stream says it is not at a boundary."""
    session = Session()
    session.client(query(b"copy t from stdin"))
    row = message(b"N", b"SNOTICE\0Mx\0\0")  # a notice, its header and 2 bytes sent
    session.server(COPY_IN)
    session.client(SYNC, copy_data(b"x\n"), query(CLEAN_TEXT))
    assert session.server(row[:7]) == row[:7]
    with pytest.raises(AttributionLost):
        session.server(row[7:], error(), ready())
    assert not session.backend.at_message_boundary()


def test_prepared_clean_ends_the_session_once_attribution_is_lost() -> None:
    """A rewritten prepared statement could be executed later, unshaped: the session's
    next message ends it."""
    session = Session()
    session.client(parse(b"s1", CLEAN_TEXT), SYNC)
    session.server(PARSE_COMPLETE, ready())
    session.client(query(b"copy t from stdin"))
    session.server(COPY_IN)
    session.client(SYNC, copy_data(b"x\n"))
    session.server(error(), ready())
    with pytest.raises(ProtocolViolation):
        session.client(bind(b"", b"s1"), execute(), SYNC)


def test_the_session_ending_error_names_the_dialects_statements() -> None:
    """The FATAL text comes from the dialect (``Dialect.statements``): the stream itself
    names no dialect."""
    session = Session()
    session.client(parse(b"c", CLEAN_TEXT), SYNC)
    session.server(PARSE_COMPLETE, ready())
    with pytest.raises(ProtocolViolation, match="while fake CLEAN statements are prepared"):
        session.client(parse(b"c", b"select 1"), SYNC)


def test_two_copies_of_one_query_with_a_sync_between_give_attribution_up() -> None:
    """``COPY a FROM STDIN; COPY b FROM STDIN``: a Sync after the first CopyDone is read
    by the second COPY, or answered if the string held no second COPY."""
    session = Session()
    session.client(query(b"copy a from stdin; copy b from stdin"), COPY_DONE, SYNC, COPY_DONE)
    assert session.state.attribution_lost


def test_copy_in_response_twice_gives_attribution_up() -> None:
    session = Session()
    session.client(query(b"copy t from stdin"))
    session.server(COPY_IN, COPY_IN)
    assert session.state.attribution_lost


def test_clean_in_the_same_read_after_attribution_is_given_up_passes_through() -> None:
    """Found by the isolation fuzz: the read that gives attribution up holds a CLEAN."""
    session = Session()
    session.client(COPY_DONE, SYNC)
    out = session.client(COPY_DONE, parse(b"", CLEAN_TEXT))
    assert out == COPY_DONE + parse(b"", CLEAN_TEXT)
    assert session.state.attribution_lost and not session.state.queue


def test_executions_never_answered_are_reported_unknown_when_the_server_leg_closes() -> None:
    """The session ended (a client protocol violation, the server gone) while a CLEAN
    was sent and unanswered: it may have run, so its outcome is reported unknown."""
    session = Session()
    session.client(query(CLEAN_TEXT))
    session.backend.abandon()
    assert session.dialect.outcomes == [SESSION_ENDED]
    assert not session.state.queue


def test_executions_of_a_failed_group_are_not_reported_when_the_server_leg_closes() -> None:
    """After an error the server skips the rest of the group: nothing of it ran."""
    session = Session()
    session.client(parse(b"", b"select 1/0"), bind(b"", b""), execute())
    session.client(parse(b"", CLEAN_TEXT), bind(b"", b""), execute(), SYNC)
    session.server(PARSE_COMPLETE, BIND_COMPLETE, error(b"22012"))
    session.backend.abandon()
    assert session.dialect.outcomes == []


def test_parsing_a_name_that_holds_a_clean_again_ends_the_session() -> None:
    """The server refuses the second Parse (42P05) if the first succeeded, and takes it
    if the first failed: the bytes do not say which, so the name's executions could be
    shaped wrongly either way."""
    session = Session()
    session.client(parse(b"c", CLEAN_TEXT), SYNC)
    with pytest.raises(ProtocolViolation):
        session.client(parse(b"c", b"select 1"))


def test_the_unnamed_statement_is_replaced_by_the_next_parse() -> None:
    session = Session()
    session.client(parse(b"", CLEAN_TEXT), SYNC)
    session.server(PARSE_COMPLETE, ready())
    session.client(parse(b"", b"select 1"), bind(b"", b""), execute(), SYNC)
    assert not session.state.queue


PARAMETER_DESCRIPTION = message(b"t", b"\0\0")
NO_DATA = message(b"n", b"")


def test_query_after_an_answered_unsynced_batch_keeps_attribution() -> None:
    """asyncpg's copy_records_to_table: Parse, Describe, Flush; it waits for the answers,
    then sends its COPY as a Query. The server answered every message without an error,
    so it runs the Query, whose ReadyForQuery closes the group."""
    session = Session()
    session.client(parse(b"s", b"select a from t"), describe_statement(b"s"), FLUSH)
    session.server(PARSE_COMPLETE, PARAMETER_DESCRIPTION, NO_DATA)
    session.client(query(b"copy t from stdin"))
    assert not session.state.attribution_lost
    session.server(COPY_IN)
    session.client(copy_data(b"1\n"), COPY_DONE)
    session.server(command_complete(b"COPY 1"), ready())
    session.clean_is_shaped()


@pytest.mark.parametrize("answered", ["nothing", "parse only", "an error"])
def test_query_after_an_unanswered_or_failed_unsynced_batch_gives_attribution_up(
    answered: str,
) -> None:
    session = Session()
    session.client(parse(b"s", b"select a from t"), describe_statement(b"s"), FLUSH)
    if answered == "parse only":
        session.server(PARSE_COMPLETE)
    elif answered == "an error":
        session.server(error(b"42P01"))
    session.client(query(b"select 1"))
    assert session.state.attribution_lost


def test_a_close_the_server_may_skip_keeps_the_statement_a_clean() -> None:
    """Close of a prepared CLEAN behind a message that may fail: the server skips it
    then, and the statement stays; its later executions are still shaped."""
    session = Session()
    session.client(parse(b"c", CLEAN_TEXT), SYNC)
    session.server(PARSE_COMPLETE, ready())
    session.client(parse(b"", b"select 1/0"), bind(b"", b""), execute())
    session.client(message(b"C", b"Sc\0"), SYNC)
    session.server(PARSE_COMPLETE, BIND_COMPLETE, error(b"22012"), ready())
    session.client(bind(b"", b"c"), execute(), SYNC)
    assert session.state.queue  # still planned as a CLEAN


def test_a_close_right_after_a_sync_ends_the_statements_tracking() -> None:
    session = Session()
    session.client(parse(b"c", CLEAN_TEXT), SYNC)
    session.client(message(b"C", b"Sc\0"), SYNC)
    session.client(parse(b"c", b"select 1"), bind(b"", b"c"), execute(), SYNC)
    assert not session.state.queue and not session.state.attribution_lost


def test_an_unnamed_parse_replaces_the_unnamed_clean() -> None:
    """Even where the server may skip it: keeping the old plan would shape the new
    statement's replies as the CLEAN's (a client can read the CLEAN's marker)."""
    session = Session()
    session.client(parse(b"", CLEAN_TEXT), SYNC)
    session.server(PARSE_COMPLETE, ready())
    session.client(parse(b"x", b"select 1/0"), bind(b"", b"x"), execute())
    session.client(parse(b"", b"select 1"), bind(b"", b""), execute(), SYNC)
    assert not session.state.queue
