"""The server-side program that implements one CLEAN CONNECTION statement.

:func:`render_program` turns a parsed :class:`~grammar.CleanConnection` into a ``DO`` block
that the server runs in the caller's own session with the caller's privileges: validation in
openGauss's order, the optional CHECK, then ``pg_terminate_backend`` on the matching client
backends the caller may signal, a bounded wait for them to exit, and a final ``INFO`` line
carrying the counts (consumed by the proxy, never forwarded).

The generated text is pure ASCII. Names are data: they are embedded as hex of the client's
own bytes and decoded on the server from the client encoding in force when the statement
arrived, so no quote or backslash from the client ever reaches the program, whatever
``standard_conforming_strings`` or the client encoding say.
"""

from __future__ import annotations

import re

from grammar import CleanConnection

DEFAULT_WAIT_SECONDS = 15.0
"""How long a CLEAN CONNECTION waits for the sessions it terminated to exit."""
DEFAULT_CHECK_SECONDS = 5.0
"""How long CLEAN CONNECTION ... CHECK waits for other sessions to leave."""

AUDIT_MARKER = b"pgdp:audit "
"""Prefix of the INFO message the program sends with its counts (consumed by the proxy)."""

_DOLLAR_TAG = "$pgdp_clean$"

# PostgreSQL's canonical encoding names, as the server reports client_encoding.
_ENCODING_NAME = re.compile(r"[A-Z0-9_]+")

# Client backends. PostgreSQL hides backend_type (and state) of other roles' sessions from
# a caller without their privileges or pg_read_all_stats; such a row with a role is
# counted as a session (it can only be a client backend or one of its parallel workers),
# so that CHECK is conservative and the skipped count is honest.
_IS_SESSION = (
    "(a.backend_type OPERATOR(pg_catalog.=) 'client backend'"
    " OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))"
)

# The server-side program. Placeholders are filled with SQL produced by this module only
# (hex literals, numbers, booleans, NULL): no client text ever reaches this template.
#
# It is compiled under the caller's search_path, which may name a schema where anyone can
# create objects before pg_catalog (CVE-2018-1058). So every operator is spelled
# OPERATOR(pg_catalog.x), every function and type is pg_catalog-qualified (record too: a
# composite type named "record" earlier in the path would otherwise be used), and nothing
# relies on a name looked up in the path: not IS DISTINCT FROM (it finds "=" there), not
# an unqualified cast. Note that OPERATOR(...) has the precedence of "any other operator"
# (above comparison), whatever the operator: parenthesize when mixing them.
_PROGRAM = """DO {tag}
DECLARE
  v_db pg_catalog.text := {database};
  v_user pg_catalog.text := {user};
  v_nodes pg_catalog.text[] := {nodes};
  v_check pg_catalog.bool := {check};
  v_force pg_catalog.bool := {force};
  v_wait_seconds pg_catalog.float8 := {wait};
  v_check_seconds pg_catalog.float8 := {check_wait};
  v_super pg_catalog.bool;
  v_dbid pg_catalog.oid;
  v_owner pg_catalog.oid;
  v_roleid pg_catalog.oid;
  v_sessions pg_catalog.int8;
  v_prepared pg_catalog.int8;
  v_deadline pg_catalog.timestamptz;
  v_pids pg_catalog.int4[] := '{{}}';
  v_terminated pg_catalog.int4 := 0;
  v_skipped pg_catalog.int4 := 0;
  v_remaining pg_catalog.int8 := 0;
  v_signalled pg_catalog.bool;
  r pg_catalog.record;
BEGIN
  SELECT rolsuper INTO v_super FROM pg_catalog.pg_roles
   WHERE rolname OPERATOR(pg_catalog.=) current_user;
  IF v_db IS NULL AND v_user IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42601', MESSAGE = 'must define Database name or user name';
  END IF;
  IF v_db IS NOT NULL THEN
    SELECT oid, datdba INTO v_dbid, v_owner FROM pg_catalog.pg_database
     WHERE datname OPERATOR(pg_catalog.=) v_db;
    IF NOT FOUND THEN
      RAISE EXCEPTION USING ERRCODE = '3D000',
        MESSAGE = pg_catalog.format('database "%s" does not exist', v_db);
    END IF;
    -- Ownership means the owner's privileges (PostgreSQL's object_ownercheck): a member
    -- that does not inherit them (NOINHERIT, or a grant WITH INHERIT FALSE) is no owner.
    IF NOT v_super AND NOT pg_catalog.pg_has_role(current_user, v_owner, 'USAGE') THEN
      RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = pg_catalog.format('must be owner of database %s', v_db);
    END IF;
  ELSIF NOT v_super THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = 'must be system admin to clean pool connections';
  END IF;
  IF v_user IS NOT NULL THEN
    SELECT oid INTO v_roleid FROM pg_catalog.pg_roles
     WHERE rolname OPERATOR(pg_catalog.=) v_user;
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
    v_deadline := pg_catalog.clock_timestamp()
      OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => v_check_seconds);
    LOOP
      PERFORM pg_catalog.pg_stat_clear_snapshot();
      SELECT pg_catalog.count(*) INTO v_sessions FROM pg_catalog.pg_stat_activity a
       WHERE {is_session} AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
         AND (v_dbid IS NULL OR a.datid OPERATOR(pg_catalog.=) v_dbid)
         AND (v_roleid IS NULL OR a.usesysid OPERATOR(pg_catalog.=) v_roleid);
      SELECT pg_catalog.count(*) INTO v_prepared FROM pg_catalog.pg_prepared_xacts p
       WHERE v_dbid IS NOT NULL AND p.database OPERATOR(pg_catalog.=) v_db
         AND (v_user IS NULL OR p.owner OPERATOR(pg_catalog.=) v_user);
      EXIT WHEN (v_sessions OPERATOR(pg_catalog.=) 0 AND v_prepared OPERATOR(pg_catalog.=) 0)
             OR pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_deadline;
      PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    IF v_sessions OPERATOR(pg_catalog.>) 0 OR v_prepared OPERATOR(pg_catalog.>) 0 THEN
      IF v_db IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
          MESSAGE = pg_catalog.format('role "%s" is being used by other users', v_user);
      END IF;
      RAISE EXCEPTION USING ERRCODE = '55006',
        MESSAGE = pg_catalog.format('database "%s" is being accessed by other users', v_db),
        DETAIL = CASE
          WHEN v_sessions OPERATOR(pg_catalog.>) 0 AND v_prepared OPERATOR(pg_catalog.>) 0
          THEN pg_catalog.format(
            'There are %s other session(s) and %s prepared transaction(s) using the database.',
            v_sessions, v_prepared)
          WHEN v_sessions OPERATOR(pg_catalog.=) 1
          THEN 'There is 1 other session using the database.'
          WHEN v_sessions OPERATOR(pg_catalog.>) 1 THEN pg_catalog.format(
            'There are %s other sessions using the database.', v_sessions)
          WHEN v_prepared OPERATOR(pg_catalog.=) 1
          THEN 'There is 1 prepared transaction using the database.'
          ELSE pg_catalog.format(
            'There are %s prepared transactions using the database.', v_prepared)
        END;
    END IF;
  END IF;

  PERFORM pg_catalog.pg_stat_clear_snapshot();
  FOR r IN
    SELECT a.pid, a.usesysid, t.rolsuper AS target_super
      FROM pg_catalog.pg_stat_activity a
      LEFT JOIN pg_catalog.pg_roles t ON t.oid OPERATOR(pg_catalog.=) a.usesysid
     WHERE {is_session} AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
       AND (v_dbid IS NULL OR a.datid OPERATOR(pg_catalog.=) v_dbid)
       AND (v_roleid IS NULL OR a.usesysid OPERATOR(pg_catalog.=) v_roleid)
  LOOP
    -- PostgreSQL's own rule (signalfuncs.c): superuser sessions need a superuser; others
    -- need the privileges of the session's role or of pg_signal_backend.
    IF NOT v_super AND (r.target_super IS NOT FALSE OR NOT (
         pg_catalog.pg_has_role(current_user, r.usesysid, 'USAGE')
         OR pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE'))) THEN
      v_skipped := v_skipped OPERATOR(pg_catalog.+) 1;
      CONTINUE;
    END IF;
    BEGIN
      IF v_force THEN
        v_signalled := pg_catalog.pg_terminate_backend(r.pid);
      ELSE
        -- Connections in use are cleared only in force mode. The state is read afresh
        -- in the statement that signals, not from the snapshot above: a pooled
        -- connection may have begun a transaction since (no row: it has exited).
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        SELECT pg_catalog.pg_terminate_backend(s.pid) INTO v_signalled
          FROM pg_catalog.pg_stat_get_activity(r.pid) s
         WHERE s.state OPERATOR(pg_catalog.=) 'idle';
      END IF;
      IF v_signalled THEN
        v_terminated := v_terminated OPERATOR(pg_catalog.+) 1;
        v_pids := pg_catalog.array_append(v_pids, r.pid);
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      v_skipped := v_skipped OPERATOR(pg_catalog.+) 1;
    END;
  END LOOP;
  IF v_skipped OPERATOR(pg_catalog.>) 0 THEN
    RAISE WARNING USING MESSAGE = pg_catalog.format(
      'permission denied to terminate %s matching session(s); they were skipped', v_skipped);
  END IF;

  v_deadline := pg_catalog.clock_timestamp()
    OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => v_wait_seconds);
  LOOP
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT pg_catalog.count(*) INTO v_remaining FROM pg_catalog.pg_stat_activity a
     WHERE a.pid OPERATOR(pg_catalog.=) ANY (v_pids);
    EXIT WHEN v_remaining OPERATOR(pg_catalog.=) 0
           OR pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_deadline;
    PERFORM pg_catalog.pg_sleep(0.01);
  END LOOP;
  IF v_remaining OPERATOR(pg_catalog.>) 0 THEN
    RAISE WARNING USING MESSAGE = pg_catalog.format(
      'clean active sessions not completed, %s remain', v_remaining);
  END IF;
  RAISE INFO USING MESSAGE = pg_catalog.format(
    '{marker}terminated=%s skipped=%s remaining=%s', v_terminated, v_skipped, v_remaining);
END
{tag}"""


def _text_literal(value: str | None, codec: str, encoding: str) -> str:
    """``value`` as the client's own bytes in hex, decoded on the server from ``encoding``;
    or NULL."""
    if value is None:
        return "NULL"
    return (
        f"pg_catalog.convert_from(pg_catalog.decode('{value.encode(codec).hex()}', 'hex'),"
        f" '{encoding}')"
    )


def render_program(
    statement: CleanConnection,
    *,
    codec: str,
    encoding: str,
    wait_seconds: float,
    check_seconds: float,
) -> str:
    """The DO block implementing ``statement`` (ASCII only, no client text inside).

    ``codec`` is the Python codec that turns the parsed names back into the client's bytes;
    ``encoding`` is the PostgreSQL name of the client encoding in force when the server
    received the statement (``UTF8``, ``SJIS``, ``LATIN1``...), in which the server decodes
    them. It is embedded as a literal: PostgreSQL converts a whole query string with the
    encoding in force on arrival, so a ``SET client_encoding`` earlier in the same string
    must not change how the names are read. Raises :class:`ValueError` unless ``encoding``
    is made of ``A-Z``, ``0-9`` and ``_`` only.
    """
    if not _ENCODING_NAME.fullmatch(encoding):
        raise ValueError(f"not a PostgreSQL encoding name: {encoding!r}")
    nodes = "NULL"
    if statement.target != "all":
        names = (_text_literal(n, codec, encoding) for n in statement.nodes)
        nodes = "ARRAY[" + ", ".join(names) + "]"
    return _PROGRAM.format(
        tag=_DOLLAR_TAG,
        database=_text_literal(statement.database, codec, encoding),
        user=_text_literal(statement.user, codec, encoding),
        nodes=nodes,
        check="true" if statement.check else "false",
        force="true" if statement.force else "false",
        wait=repr(float(wait_seconds)),
        check_wait=repr(float(check_seconds)),
        marker=AUDIT_MARKER.decode(),
        is_session=_IS_SESSION,
    )
