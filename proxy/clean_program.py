"""The server-side program that implements one CLEAN CONNECTION statement.

:func:`render_program` turns a parsed :class:`~grammar.CleanConnection` into a ``DO`` block
that the server runs in the caller's own session with the caller's privileges: validation in
openGauss's order, the optional CHECK, then ``pg_terminate_backend`` on the matching client
backends the caller may signal, a bounded wait for them to exit, and a final ``INFO`` line
carrying the counts, with a DETAIL listing every session terminated or skipped (pid, role,
database, application_name, client address and port, backend_start, state) as base64 of
UTF-8 JSON, so that no client encoding can garble it (consumed by the proxy, never
forwarded).

The generated text is pure ASCII. Names are data: they are embedded as hex of the client's
own bytes and decoded on the server from the client encoding in force when the statement
arrived, so no quote or backslash from the client ever reaches the program, whatever
``standard_conforming_strings`` or the client encoding say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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

# Sessions: client backends, and every other backend running as a role, as openGauss's
# CLEAN CONNECTION counts and signals every process of the database and/or role
# (CountOtherDBBackends, CountUserBackends, ValidDBoidAndUseroid): a walsender of a
# `replication=database` connection, parallel workers, background workers connected as a
# role. All of them make DROP DATABASE fail, so CHECK counts them and FORCE terminates
# them. Not autovacuum workers (no role): DROP DATABASE stops those itself. PostgreSQL
# hides backend_type (and state) of other roles' sessions from a caller without their
# privileges or pg_read_all_stats; such a row with a role is a session too, so that CHECK
# is conservative and the skipped count is honest.
_IS_SESSION = "(a.backend_type OPERATOR(pg_catalog.=) 'client backend' OR a.usesysid IS NOT NULL)"

# --- The decisions, shared by the DO program and EXPLAIN --------------------------------
#
# Each fragment below is one SQL expression or query with placeholders for its inputs, which
# the DO program fills with PL/pgSQL variables (v_db, v_dbid...) and EXPLAIN with columns of
# its validation row (g.db, g.dbid...): the statement and its EXPLAIN run the same SQL, so
# they cannot disagree about an error, a CHECK or a session.

# Validation in openGauss's order: the first failing check gives the SQLSTATE and message
# (NULL: valid), with the caller's superuser bit and the database's and role's oids.
# Inputs: {db}, {user} (text or NULL), {node} (the first node name, or NULL for TO ALL).
_VALIDATION = """SELECT v.super, v.dbid, v.roleid, v.db, v.usr,
       (ARRAY['42601', '3D000', '42501', '42501', '42704', '42601'])[v.step] AS errcode,
       CASE
         WHEN v.step OPERATOR(pg_catalog.=) 1 THEN 'must define Database name or user name'
         WHEN v.step OPERATOR(pg_catalog.=) 2
         THEN pg_catalog.format('database "%s" does not exist', v.db)
         WHEN v.step OPERATOR(pg_catalog.=) 3
         THEN pg_catalog.format('must be owner of database %s', v.db)
         WHEN v.step OPERATOR(pg_catalog.=) 4
         THEN 'must be system admin to clean pool connections'
         WHEN v.step OPERATOR(pg_catalog.=) 5
         THEN pg_catalog.format('role "%s" does not exist', v.usr)
         WHEN v.step OPERATOR(pg_catalog.=) 6
         THEN pg_catalog.format('Node %s: object not defined', v.node)
       END AS message
  FROM (SELECT c.super, d.oid AS dbid, u.oid AS roleid, p.db, p.usr, p.node,
               CASE
                 WHEN p.db IS NULL AND p.usr IS NULL THEN 1
                 WHEN p.db IS NOT NULL AND d.oid IS NULL THEN 2
                 -- Ownership means the owner's privileges (PostgreSQL's object_ownercheck):
                 -- a member that does not inherit them (NOINHERIT, WITH INHERIT FALSE) is none.
                 WHEN p.db IS NOT NULL AND NOT c.super
                  AND NOT pg_catalog.pg_has_role(current_user, d.datdba, 'USAGE') THEN 3
                 WHEN p.db IS NULL AND NOT c.super THEN 4
                 WHEN p.usr IS NOT NULL AND u.oid IS NULL THEN 5
                 WHEN p.node IS NOT NULL THEN 6
               END AS step
          FROM (SELECT {db} AS db, {user} AS usr, {node} AS node) p
         CROSS JOIN (SELECT me.rolsuper AS super FROM pg_catalog.pg_roles me
                      WHERE me.rolname OPERATOR(pg_catalog.=) current_user) c
          LEFT JOIN pg_catalog.pg_database d ON d.datname OPERATOR(pg_catalog.=) p.db
          LEFT JOIN pg_catalog.pg_roles u ON u.rolname OPERATOR(pg_catalog.=) p.usr) v"""

# What CHECK counts, as openGauss's CountOtherDBBackends: with a database, every other
# session on it (whatever its role) and its prepared transactions; with a user only, that
# role's other sessions. Inputs: {dbid}, {roleid}, {db}.
_CHECK_SESSIONS = """SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
 WHERE {is_session} AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
   AND CASE WHEN {dbid} IS NOT NULL THEN a.datid OPERATOR(pg_catalog.=) {dbid}
            ELSE a.usesysid OPERATOR(pg_catalog.=) {roleid} END"""
_CHECK_PREPARED = """SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_xacts p
 WHERE {dbid} IS NOT NULL AND p.database OPERATOR(pg_catalog.=) {db}"""
# CHECK's 55006 message and (with a database) PostgreSQL's DETAIL. Inputs: {db}, {user},
# {sessions}, {prepared}.
_CHECK_MESSAGE = """CASE WHEN {db} IS NULL
  THEN pg_catalog.format('role "%s" is being used by other users', {user})
  ELSE pg_catalog.format('database "%s" is being accessed by other users', {db}) END"""
_CHECK_DETAIL = """CASE
  WHEN {sessions} OPERATOR(pg_catalog.>) 0 AND {prepared} OPERATOR(pg_catalog.>) 0
  THEN pg_catalog.format(
    'There are %s other session(s) and %s prepared transaction(s) using the database.',
    {sessions}, {prepared})
  WHEN {sessions} OPERATOR(pg_catalog.=) 1 THEN 'There is 1 other session using the database.'
  WHEN {sessions} OPERATOR(pg_catalog.>) 1
  THEN pg_catalog.format('There are %s other sessions using the database.', {sessions})
  WHEN {prepared} OPERATOR(pg_catalog.=) 1
  THEN 'There is 1 prepared transaction using the database.'
  ELSE pg_catalog.format('There are %s prepared transactions using the database.', {prepared})
END"""

# One row per session the statement considers, with its fate: ``action`` is 'terminate',
# 'skip' (PostgreSQL would not let the caller signal it) or 'spare', and ``reason`` says
# why it is not terminated: 'caller', 'other user' (listed only with {others}: CHECK counts
# it), 'without force' (--clean-without-force none), 'no privilege', 'in use' (not idle,
# or its state hidden from the caller, without FORCE). PostgreSQL's signalling rule
# (signalfuncs.c): superusers' sessions need a superuser; others the privileges of the
# session's role or of pg_signal_backend. Inputs: {dbid}, {roleid}, {super}, {force},
# {unforced_spared}, {others}.
_DECISIONS = """SELECT a.pid, a.usename, a.datname, a.application_name, a.client_addr,
       a.client_port, a.state, a.backend_start, w.reason,
       CASE WHEN w.reason IS NULL THEN 'terminate'
            WHEN w.reason OPERATOR(pg_catalog.=) 'no privilege' THEN 'skip'
            ELSE 'spare' END AS action
  FROM pg_catalog.pg_stat_activity a
  LEFT JOIN pg_catalog.pg_roles t ON t.oid OPERATOR(pg_catalog.=) a.usesysid
 CROSS JOIN LATERAL (SELECT CASE
     WHEN a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() THEN 'caller'
     WHEN {roleid} IS NOT NULL
      AND NOT COALESCE(a.usesysid OPERATOR(pg_catalog.=) {roleid}, false) THEN 'other user'
     WHEN NOT {force} AND {unforced_spared} THEN 'without force'
     WHEN NOT {super} AND (t.rolsuper IS NOT FALSE OR NOT (
          pg_catalog.pg_has_role(current_user, a.usesysid, 'USAGE')
          OR pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE')))
     THEN 'no privilege'
     WHEN {force} THEN NULL
     WHEN COALESCE(a.state OPERATOR(pg_catalog.=) 'idle', false) THEN NULL
     ELSE 'in use' END AS reason) w
 WHERE {is_session}
   AND ({dbid} IS NULL OR a.datid OPERATOR(pg_catalog.=) {dbid})
   AND ({roleid} IS NULL OR a.usesysid OPERATOR(pg_catalog.=) {roleid}
        OR ({others} AND {dbid} IS NOT NULL))"""


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
  v_check pg_catalog.bool := {check};
  v_force pg_catalog.bool := {force};
  v_wait_seconds pg_catalog.float8 := {wait};
  v_check_seconds pg_catalog.float8 := {check_wait};
  v_super pg_catalog.bool;
  v_dbid pg_catalog.oid;
  v_roleid pg_catalog.oid;
  v_errcode pg_catalog.text;
  v_message pg_catalog.text;
  v_sessions pg_catalog.int8;
  v_prepared pg_catalog.int8;
  v_deadline pg_catalog.timestamptz;
  v_pids pg_catalog.int4[] := '{{}}';
  v_terminated pg_catalog.int4 := 0;
  v_skipped pg_catalog.int4 := 0;
  v_remaining pg_catalog.int8 := 0;
  v_signalled pg_catalog.bool;
  v_report pg_catalog.json[] := '{{}}';
  r pg_catalog.record;
BEGIN
  -- Who runs it, as it runs (after SET ROLE or SET application_name): for the audit record.
  RAISE INFO USING MESSAGE = '{marker}caller', DETAIL = pg_catalog.encode(pg_catalog.convert_to(
    pg_catalog.format('%s', pg_catalog.json_build_object('role', current_user,
      'application_name', pg_catalog.current_setting('application_name'))), 'UTF8'), 'base64');
  SELECT v.super, v.dbid, v.roleid, v.errcode, v.message
    INTO v_super, v_dbid, v_roleid, v_errcode, v_message
    FROM ({validation}) v;
  IF v_errcode IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = v_errcode, MESSAGE = v_message;
  END IF;

  IF v_check THEN
    v_deadline := pg_catalog.clock_timestamp()
      OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => v_check_seconds);
    LOOP
      PERFORM pg_catalog.pg_stat_clear_snapshot();
      SELECT ({check_sessions}), ({check_prepared}) INTO v_sessions, v_prepared;
      EXIT WHEN (v_sessions OPERATOR(pg_catalog.=) 0 AND v_prepared OPERATOR(pg_catalog.=) 0)
             OR pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>=) v_deadline;
      PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    IF v_sessions OPERATOR(pg_catalog.>) 0 OR v_prepared OPERATOR(pg_catalog.>) 0 THEN
      IF v_db IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55006', MESSAGE = {check_message};
      END IF;
      RAISE EXCEPTION USING ERRCODE = '55006', MESSAGE = {check_message},
        DETAIL = {check_detail};
    END IF;
  END IF;

  PERFORM pg_catalog.pg_stat_clear_snapshot();
  FOR r IN
    SELECT x.pid, x.action, x.usename, x.datname, x.application_name, x.client_addr,
           x.client_port, x.backend_start, x.state
      FROM ({decisions}) x
     WHERE x.action OPERATOR(pg_catalog.<>) 'spare'
  LOOP
    IF r.action OPERATOR(pg_catalog.=) 'skip' THEN
      v_skipped := v_skipped OPERATOR(pg_catalog.+) 1;
      v_report := pg_catalog.array_append(v_report, {victim_skipped});
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
        v_report := pg_catalog.array_append(v_report, {victim_terminated});
      END IF;
    EXCEPTION WHEN insufficient_privilege THEN
      v_skipped := v_skipped OPERATOR(pg_catalog.+) 1;
      v_report := pg_catalog.array_append(v_report, {victim_skipped});
    END;
  END LOOP;
  IF v_skipped OPERATOR(pg_catalog.>) 0 THEN
    RAISE WARNING USING MESSAGE = pg_catalog.format(
      'permission denied to terminate %s matching session(s); they were skipped', v_skipped);
  END IF;
  -- Reported as soon as the sessions are signalled, not only at the end: a statement
  -- cancelled while it waits for them to exit is still audited with them.
  RAISE INFO USING MESSAGE = pg_catalog.format(
    '{marker}terminated=%s skipped=%s', v_terminated, v_skipped),
    DETAIL = pg_catalog.encode(pg_catalog.convert_to(
      pg_catalog.format('%s', pg_catalog.array_to_json(v_report)), 'UTF8'), 'base64');

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
  RAISE INFO USING MESSAGE = pg_catalog.format('{marker}remaining=%s', v_remaining);
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


WITHOUT_FORCE_MODES = ("idle", "none")
"""What a statement without FORCE terminates: idle sessions, or none (openGauss single node)."""

EXPLAIN_ERROR_PREFIX = b"pgdp:explain:"
"""Starts the text an EXPLAIN query casts to int4 to fail: ``pgdp:explain:SQLSTATE:message``
then :data:`EXPLAIN_ERROR_SUFFIX`. The proxy turns that 22P02 error into the SQLSTATE and
message (:func:`explain_error`)."""
EXPLAIN_ERROR_SUFFIX = b":pgdp"

# EXPLAIN CLEAN CONNECTION: one SELECT. The validation row g is computed first (a
# materialized CTE scanned before anything else) and fails the query, when a check fails,
# by casting the sentinel text to int4 at run time (the text depends on catalog rows, so
# the planner cannot fold it). Then one row per session the statement would consider, and
# with CHECK a last row saying whether CHECK would pass now (no waiting).
_EXPLAIN = """WITH g AS MATERIALIZED (
  SELECT v.*, CASE WHEN v.errcode IS NOT NULL THEN CAST(
      pg_catalog.concat('{prefix}', v.errcode, ':', v.message, '{suffix}') AS pg_catalog.int4)
    END AS raised
    FROM ({validation}) v
), peer (pid, addr) AS ({peers})
SELECT x.pid, x.usename, x.datname, x.application_name, x.client_addr, x.state,
       x.backend_start, x.action, x.reason
  FROM (
    SELECT 0 AS k, s.pid, s.usename, s.datname, s.application_name,
           CASE
             -- a session hidden from the caller in pg_stat_activity (backend_start NULL):
             -- the proxy's record of its real client must not show it either
             WHEN s.backend_start IS NULL THEN NULL
             WHEN peer.addr IS NOT NULL THEN peer.addr
             WHEN s.client_addr IS NULL THEN NULL
             WHEN pg_catalog.family(s.client_addr) OPERATOR(pg_catalog.=) 6
             THEN pg_catalog.format('[%s]:%s', pg_catalog.host(s.client_addr), s.client_port)
             ELSE pg_catalog.format('%s:%s', pg_catalog.host(s.client_addr), s.client_port)
           END AS client_addr,
           s.state, s.backend_start, s.action, s.reason
      FROM g CROSS JOIN LATERAL ({decisions}) s
      LEFT JOIN peer ON peer.pid OPERATOR(pg_catalog.=) s.pid
     WHERE g.raised IS NULL
    UNION ALL
    SELECT 1, NULL, pg_catalog.name(g.usr), pg_catalog.name(g.db), NULL, NULL, NULL, NULL,
           'check',
           CASE WHEN n.sessions OPERATOR(pg_catalog.=) 0 AND n.prepared OPERATOR(pg_catalog.=) 0
                THEN 'pass'
                WHEN g.db IS NULL THEN pg_catalog.concat('fail: ', {check_message},
                  CASE WHEN n.sessions OPERATOR(pg_catalog.=) 1 THEN ' (1 other session)'
                       ELSE pg_catalog.format(' (%s other sessions)', n.sessions) END)
                ELSE pg_catalog.concat('fail: ', {check_detail}) END
      FROM g CROSS JOIN LATERAL (
             SELECT ({check_sessions}) AS sessions, ({check_prepared}) AS prepared) n
     WHERE g.raised IS NULL AND {check}
  ) x
 ORDER BY x.k, x.pid"""


def _fill(template: str, **values: str) -> str:
    return template.format(is_session=_IS_SESSION, **values)


def _names(statement: CleanConnection, codec: str, encoding: str) -> tuple[str, str, str]:
    """The database, user and first node name of ``statement`` as SQL (or NULL)."""
    if not _ENCODING_NAME.fullmatch(encoding):
        raise ValueError(f"not a PostgreSQL encoding name: {encoding!r}")
    node = _text_literal(statement.nodes[0], codec, encoding) if statement.nodes else "NULL"
    return (
        _text_literal(statement.database, codec, encoding),
        _text_literal(statement.user, codec, encoding),
        node,
    )


def _check_mode(without_force: str) -> str:
    if without_force not in WITHOUT_FORCE_MODES:
        raise ValueError(f"without_force must be one of {WITHOUT_FORCE_MODES}: {without_force!r}")
    return "true" if without_force == "none" else "false"


def render_program(
    statement: CleanConnection,
    *,
    codec: str,
    encoding: str,
    wait_seconds: float,
    check_seconds: float,
    without_force: str = "idle",
    marker_token: str = "",
) -> str:
    """The DO block implementing ``statement`` (ASCII only, no client text inside).

    Its INFO lines for the audit start with :data:`AUDIT_MARKER`, then ``marker_token``
    (hex digits) and a space when one is given.

    ``codec`` is the Python codec that turns the parsed names back into the client's bytes;
    ``encoding`` is the PostgreSQL name of the client encoding in force when the server
    received the statement (``UTF8``, ``SJIS``, ``LATIN1``...), in which the server decodes
    them. It is embedded as a literal: PostgreSQL converts a whole query string with the
    encoding in force on arrival, so a ``SET client_encoding`` earlier in the same string
    must not change how the names are read. ``without_force`` is ``idle`` (a statement
    without FORCE terminates idle sessions) or ``none`` (it terminates nothing). Raises
    :class:`ValueError` unless ``encoding`` is made of ``A-Z``, ``0-9`` and ``_`` only.
    """
    if marker_token and not all(c in "0123456789abcdef" for c in marker_token):
        raise ValueError("marker_token must be lowercase hex digits")
    database, user, node = _names(statement, codec, encoding)
    variables = {"db": "v_db", "user": "v_user", "dbid": "v_dbid", "roleid": "v_roleid"}
    return _PROGRAM.format(
        tag=_DOLLAR_TAG,
        database=database,
        user=user,
        check="true" if statement.check else "false",
        force="true" if statement.force else "false",
        wait=repr(float(wait_seconds)),
        check_wait=repr(float(check_seconds)),
        marker=AUDIT_MARKER.decode() + (f"{marker_token} " if marker_token else ""),
        validation=_fill(_VALIDATION, db="v_db", user="v_user", node=node),
        check_sessions=_fill(_CHECK_SESSIONS, **variables),
        check_prepared=_fill(_CHECK_PREPARED, **variables),
        check_message=_fill(_CHECK_MESSAGE, **variables),
        check_detail=_fill(_CHECK_DETAIL, sessions="v_sessions", prepared="v_prepared"),
        decisions=_fill(
            _DECISIONS,
            super="v_super",
            force="v_force",
            unforced_spared=_check_mode(without_force),
            others="false",
            **variables,
        ),
        victim_skipped=_victim("skipped"),
        victim_terminated=_victim("terminated"),
    )


def _victim(outcome: str) -> str:
    """The JSON object reporting one matching session (``r``) and what was done to it."""
    return (
        f"pg_catalog.json_build_object('outcome', '{outcome}', 'pid', r.pid, "
        "'role', r.usename, 'database', r.datname, 'application_name', r.application_name, "
        "'client_addr', r.client_addr, 'client_port', r.client_port, "
        "'backend_start', r.backend_start, 'state', r.state)"
    )


def render_explain(
    statement: CleanConnection,
    *,
    codec: str,
    encoding: str,
    without_force: str = "idle",
    peers: Mapping[int, str] | None = None,
) -> str:
    """The SELECT implementing ``EXPLAIN statement`` (ASCII only, no client text inside).

    It returns ``pid int4, usename name, datname name, application_name text,
    client_addr text, state text, backend_start timestamptz, action text, reason text``:
    one row per session ``statement`` would consider (:data:`_DECISIONS`, the rule the DO
    program applies), then with CHECK a row with ``action = 'check'`` and ``reason``
    ``pass`` or ``fail: ...`` with the blocking count (with a database, the DETAIL the
    statement would send; with a user only, its message and `` (N other sessions)``). It terminates nothing. A failing validation makes it fail
    with 22P02 and a sentinel message that :func:`explain_error` turns into the error the
    statement would raise. ``peers`` maps backend pids to the real client addresses
    (``host:port``) of sessions through the proxy; they replace pg_stat_activity's.
    ``codec``, ``encoding``, ``without_force`` as for :func:`render_program`.
    """
    database, user, node = _names(statement, codec, encoding)
    variables = {"db": "g.db", "user": "g.usr", "dbid": "g.dbid", "roleid": "g.roleid"}
    return _EXPLAIN.format(
        prefix=EXPLAIN_ERROR_PREFIX.decode(),
        suffix=EXPLAIN_ERROR_SUFFIX.decode(),
        validation=_fill(_VALIDATION, db=database, user=user, node=node),
        peers=_peer_rows(peers or {}, codec, encoding),
        decisions=_fill(
            _DECISIONS,
            super="g.super",
            force="true" if statement.force else "false",
            unforced_spared=_check_mode(without_force),
            others="true" if statement.check else "false",
            **variables,
        ),
        check="true" if statement.check else "false",
        check_sessions=_fill(_CHECK_SESSIONS, **variables),
        check_prepared=_fill(_CHECK_PREPARED, **variables),
        check_message=_fill(_CHECK_MESSAGE, **variables),
        check_detail=_fill(_CHECK_DETAIL, sessions="n.sessions", prepared="n.prepared"),
    )


def _peer_rows(peers: Mapping[int, str], codec: str, encoding: str) -> str:
    """A VALUES list (pid, address) of ``peers``, or an empty query of the same shape."""
    rows = [
        f"({int(pid)}, {_text_literal(address, codec, encoding)})"
        for pid, address in sorted(peers.items())
    ]
    if not rows:
        return "SELECT CAST(NULL AS pg_catalog.int4), CAST(NULL AS pg_catalog.text) WHERE false"
    return "VALUES " + ", ".join(rows)


def explain_error(message: bytes) -> tuple[bytes, bytes] | None:
    """The (SQLSTATE, message) carried by the 22P02 message of a failing EXPLAIN query,
    or None if ``message`` carries none. The server's own words around the sentinel may be
    translated (lc_messages): only the sentinel is looked for."""
    start = message.find(EXPLAIN_ERROR_PREFIX)
    end = message.rfind(EXPLAIN_ERROR_SUFFIX)
    if start < 0 or end < start:
        return None
    body = message[start + len(EXPLAIN_ERROR_PREFIX) : end]
    sqlstate, sep, text = body.partition(b":")
    if not sep or len(sqlstate) != 5 or not sqlstate.isalnum():
        return None
    return sqlstate, text
