"""CLEAN CONNECTION on stock PostgreSQL: the rewrite, the server-side program, the audit.

A valid statement is replaced, in place in the client's query string, by a ``DO`` block
that the server runs in the caller's own session with the caller's privileges
(DESIGN.md §4): validation in openGauss's order, the optional CHECK, then
``pg_terminate_backend`` on the matching client backends the caller may signal, and a
bounded wait for them to exit. The proxy then shapes that statement's replies
(:mod:`proxy.streams`): tag ``CLEAN CONNECTION``, no PL/pgSQL CONTEXT, and the final
``INFO`` audit line with the counts is consumed, never forwarded.

Names are data: they are embedded as hex of the client's own bytes and decoded on the
server with ``convert_from(decode('…', 'hex'), pg_client_encoding())``. The generated text
is pure ASCII with no quotes or backslashes from the client, so it is inert whatever
``standard_conforming_strings`` or the client encoding say.

A string holding an *invalid* CLEAN CONNECTION is sent unchanged: the server rejects the
whole string at the ``CLEAN`` token (nothing in it runs, the transaction state is the
server's), and the proxy replaces that syntax error's text and position with the
grammar's (``SyntaxFix``).
"""

from __future__ import annotations

import logging
import time

from grammar import CleanConnection, Statement, might_contain_clean, split_statements

from .session import Session
from .streams import AUDIT_MARKER, Rewrite, ShapedStatement, SyntaxFix

audit_log = logging.getLogger("pgdp.audit")


_DOLLAR_TAG = "$pgdp_clean$"

# Client backends. PostgreSQL hides backend_type (and state) of other roles' sessions from
# a caller without their privileges or pg_read_all_stats; such a row with a role is
# counted as a session (it can only be a client backend or one of its parallel workers),
# so that CHECK is conservative and the skipped count is honest.
_IS_SESSION = (
    "(a.backend_type = 'client backend' OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))"
)

# The server-side program. Placeholders are filled with SQL produced by this module only
# (hex literals, numbers, booleans, NULL): no client text ever reaches this template.
_PROGRAM = """DO {tag}
DECLARE
  v_db text := {database};
  v_user text := {user};
  v_nodes text[] := {nodes};
  v_check boolean := {check};
  v_force boolean := {force};
  v_wait_seconds float8 := {wait};
  v_check_seconds float8 := {check_wait};
  v_super boolean;
  v_dbid oid;
  v_owner oid;
  v_roleid oid;
  v_sessions bigint;
  v_prepared bigint;
  v_deadline timestamptz;
  v_pids int[] := '{{}}';
  v_terminated int := 0;
  v_skipped int := 0;
  v_remaining int := 0;
  r record;
BEGIN
  SELECT rolsuper INTO v_super FROM pg_catalog.pg_roles WHERE rolname = current_user;
  IF v_db IS NULL AND v_user IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42601', MESSAGE = 'must define Database name or user name';
  END IF;
  IF v_db IS NOT NULL THEN
    SELECT oid, datdba INTO v_dbid, v_owner FROM pg_catalog.pg_database WHERE datname = v_db;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '3D000',
        MESSAGE = pg_catalog.format('database "%s" does not exist', v_db);
    END IF;
    IF NOT v_super AND NOT pg_catalog.pg_has_role(current_user, v_owner, 'MEMBER') THEN
      RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = pg_catalog.format('must be owner of database %s', v_db);
    END IF;
  ELSIF NOT v_super THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = 'must be system admin to clean pool connections';
  END IF;
  IF v_user IS NOT NULL THEN
    SELECT oid INTO v_roleid FROM pg_catalog.pg_roles WHERE rolname = v_user;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '42704',
        MESSAGE = pg_catalog.format('role "%s" does not exist', v_user);
    END IF;
  END IF;
  IF v_nodes IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42601',
      MESSAGE = pg_catalog.format('Node %s: object not defined', v_nodes[1]);
  END IF;

  IF v_check THEN
    v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => v_check_seconds);
    LOOP
      PERFORM pg_catalog.pg_stat_clear_snapshot();
      SELECT pg_catalog.count(*) INTO v_sessions FROM pg_catalog.pg_stat_activity a
       WHERE {is_session} AND a.pid <> pg_catalog.pg_backend_pid()
         AND (v_dbid IS NULL OR a.datid = v_dbid)
         AND (v_roleid IS NULL OR a.usesysid = v_roleid);
      SELECT pg_catalog.count(*) INTO v_prepared FROM pg_catalog.pg_prepared_xacts p
       WHERE v_dbid IS NOT NULL AND p.database = v_db
         AND (v_user IS NULL OR p.owner = v_user);
      EXIT WHEN (v_sessions = 0 AND v_prepared = 0)
             OR pg_catalog.clock_timestamp() >= v_deadline;
      PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    IF v_sessions > 0 OR v_prepared > 0 THEN
      IF v_db IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
          MESSAGE = pg_catalog.format('role "%s" is being used by other users', v_user);
      END IF;
      RAISE EXCEPTION USING ERRCODE = '55006',
        MESSAGE = pg_catalog.format('database "%s" is being accessed by other users', v_db),
        DETAIL = CASE
          WHEN v_sessions > 0 AND v_prepared > 0 THEN pg_catalog.format(
            'There are %s other session(s) and %s prepared transaction(s) using the database.',
            v_sessions, v_prepared)
          WHEN v_sessions = 1 THEN 'There is 1 other session using the database.'
          WHEN v_sessions > 1 THEN pg_catalog.format(
            'There are %s other sessions using the database.', v_sessions)
          WHEN v_prepared = 1 THEN 'There is 1 prepared transaction using the database.'
          ELSE pg_catalog.format(
            'There are %s prepared transactions using the database.', v_prepared)
        END;
    END IF;
  END IF;

  PERFORM pg_catalog.pg_stat_clear_snapshot();
  FOR r IN
    SELECT a.pid, a.state, a.usesysid, t.rolsuper AS target_super
      FROM pg_catalog.pg_stat_activity a
      LEFT JOIN pg_catalog.pg_roles t ON t.oid = a.usesysid
     WHERE {is_session} AND a.pid <> pg_catalog.pg_backend_pid()
       AND (v_dbid IS NULL OR a.datid = v_dbid)
       AND (v_roleid IS NULL OR a.usesysid = v_roleid)
  LOOP
    -- PostgreSQL's own rule (signalfuncs.c): superuser sessions need a superuser; others
    -- need the privileges of the session's role or of pg_signal_backend.
    IF NOT v_super AND (r.target_super IS NOT FALSE OR NOT (
         pg_catalog.pg_has_role(current_user, r.usesysid, 'USAGE')
         OR pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE'))) THEN
      v_skipped := v_skipped + 1;
      CONTINUE;
    END IF;
    IF NOT v_force AND r.state IS DISTINCT FROM 'idle' THEN
      CONTINUE;  -- connections in use are cleared only in force mode
    END IF;
    BEGIN
      IF pg_catalog.pg_terminate_backend(r.pid) THEN
        v_terminated := v_terminated + 1;
        v_pids := v_pids || r.pid;
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      v_skipped := v_skipped + 1;
    END;
  END LOOP;
  IF v_skipped > 0 THEN
    RAISE WARNING USING MESSAGE = pg_catalog.format(
      'permission denied to terminate %s matching session(s); they were skipped', v_skipped);
  END IF;

  v_deadline := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => v_wait_seconds);
  LOOP
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT pg_catalog.count(*) INTO v_remaining FROM pg_catalog.pg_stat_activity
     WHERE pid = ANY (v_pids);
    EXIT WHEN v_remaining = 0 OR pg_catalog.clock_timestamp() >= v_deadline;
    PERFORM pg_catalog.pg_sleep(0.01);
  END LOOP;
  IF v_remaining > 0 THEN
    RAISE WARNING USING MESSAGE = pg_catalog.format(
      'clean active sessions not completed, %s remain', v_remaining);
  END IF;
  RAISE INFO USING MESSAGE = pg_catalog.format(
    '{marker}terminated=%s skipped=%s remaining=%s', v_terminated, v_skipped, v_remaining);
END
{tag}"""


def _text_literal(value: str | None, codec: str) -> str:
    """``value`` as the client's own bytes in hex, decoded on the server; or NULL."""
    if value is None:
        return "NULL"
    return f"pg_catalog.convert_from(pg_catalog.decode('{value.encode(codec).hex()}', 'hex'), pg_catalog.pg_client_encoding())"


def render_program(
    statement: CleanConnection, *, codec: str, wait_seconds: float, check_seconds: float
) -> str:
    """The DO block implementing ``statement`` (ASCII only, no client text inside)."""
    nodes = "NULL"
    if statement.target != "all":
        nodes = "ARRAY[" + ", ".join(_text_literal(n, codec) for n in statement.nodes) + "]"
    return _PROGRAM.format(
        tag=_DOLLAR_TAG,
        database=_text_literal(statement.database, codec),
        user=_text_literal(statement.user, codec),
        nodes=nodes,
        check="true" if statement.check else "false",
        force="true" if statement.force else "false",
        wait=repr(float(wait_seconds)),
        check_wait=repr(float(check_seconds)),
        marker=AUDIT_MARKER.decode(),
        is_session=_IS_SESSION,
    )


# PostgreSQL client encodings → Python codecs. Decoding with the session's real encoding
# makes character positions match the server's count and keeps multibyte names intact.
_CODECS = {
    "UTF8": "utf-8",
    "SQL_ASCII": "latin-1",  # bytes as they are: latin-1 maps each byte to one character
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "WIN866": "cp866",
    "WIN874": "cp874",
    **{f"WIN{n}": f"cp{n}" for n in range(1250, 1259)},
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "SJIS": "shift_jis",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}


def _decode(sql: bytes, client_encoding: str) -> tuple[str, str]:
    """The query text and the codec that maps it back to the client's exact bytes.

    Uses the session's client encoding; bytes that do not decode (or an encoding Python
    lacks) fall back to latin-1, which round-trips any bytes (the keywords are ASCII).
    """
    codec = _CODECS.get(client_encoding.upper(), "latin-1")
    try:
        return sql.decode(codec), codec
    except UnicodeDecodeError:
        return sql.decode("latin-1"), "latin-1"


def rewrite_query(
    sql: bytes,
    *,
    wait_seconds: float,
    check_seconds: float,
    client_encoding: str = "UTF8",
) -> Rewrite | None:
    """The :class:`Rewrite` for a Query/Parse text, or None when it has no CLEAN statement.

    ``wait_seconds`` bounds the wait for terminated sessions to exit; ``check_seconds``
    how long CHECK waits for other sessions to leave before it reports them (55006).
    """
    text, codec = _decode(sql, client_encoding)
    statements = split_statements(text)
    if statements is None:
        return None  # unscannable: the server reports its own error
    cleans = [s for s in statements if s.is_clean]
    if not cleans:
        return None
    first_error = next((s.error for s in cleans if s.error is not None), None)
    if first_error is not None:
        fix = SyntaxFix(
            server_position=str(cleans[0].body_start + 1).encode(),
            message=first_error.message.encode(codec, "replace"),
            position=str(first_error.position).encode(),
        )
        return Rewrite(sql, syntax_fix=fix)
    return _rewrite_valid(text, codec, statements, wait_seconds, check_seconds)


def _rewrite_valid(
    text: str, codec: str, statements: list[Statement], wait_seconds: float, check_seconds: float
) -> Rewrite:
    parts: list[str] = []
    renamed: list[tuple[int, str]] = []
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    index = 0
    for statement in statements:
        if statement.is_empty:
            continue
        if statement.clean is not None:
            original = text[statement.body_start : statement.body_end]
            parts.append(text[cursor : statement.body_start])
            program = render_program(
                statement.clean,
                codec=codec,
                wait_seconds=wait_seconds,
                check_seconds=check_seconds,
            )
            parts.append(program)
            spans.append((statement.body_start, len(original), len(program)))
            cursor = statement.body_end
            renamed.append((index, original))
        index += 1
    parts.append(text[cursor:])
    return Rewrite("".join(parts).encode(codec), renamed=tuple(renamed), spans=tuple(spans))


class CleanConnectionDialect:
    """The openGauss CLEAN CONNECTION statement, for :class:`proxy.server.ProxyServer`."""

    def __init__(self, wait_seconds: float = 15.0, check_seconds: float = 5.0) -> None:
        self.wait_seconds = wait_seconds
        self.check_seconds = check_seconds

    might_rewrite = staticmethod(might_contain_clean)

    def attach(self, session: Session) -> None:
        wait, check = self.wait_seconds, self.check_seconds

        def rewrite(sql: bytes) -> Rewrite | None:
            backend = session.backend
            return rewrite_query(
                sql,
                wait_seconds=wait,
                check_seconds=check,
                client_encoding=backend.client_encoding if backend else "UTF8",
            )

        def on_outcome(
            shaped: ShapedStatement, tag: bytes, error: list[tuple[int, bytes]] | None
        ) -> None:
            _audit(session, shaped, error)

        session.rewrite = rewrite
        session.on_outcome = on_outcome


def _audit(
    session: Session, shaped: ShapedStatement, error: list[tuple[int, bytes]] | None
) -> None:
    """One structured line per execution of a CLEAN CONNECTION statement."""
    duration = time.monotonic() - shaped.sent_at
    if error is None:
        counts = shaped.counts
        outcome = (
            f"result=ok terminated={counts.get('terminated', 0)} "
            f"skipped={counts.get('skipped', 0)} remaining={counts.get('remaining', 0)}"
        )
    else:
        fields = dict(error)
        sqlstate = fields.get(ord("C"), b"").decode(errors="replace")
        text = fields.get(ord("M"), b"").decode(errors="replace")
        outcome = f"result=error sqlstate={sqlstate} message={text!r}"
    audit_log.info(
        "clean_connection %s statement=%r %s duration=%.3fs",
        session.describe(),
        shaped.text,
        outcome,
        duration,
    )
