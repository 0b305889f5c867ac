"""CVE-2018-1058 against CLEAN CONNECTION: objects planted by an unprivileged role.

The statement runs as a ``DO`` block in the caller's session, compiled under the caller's
``search_path``. An unprivileged attacker who owns schema ``evil`` and may create objects
in ``public`` plants, in both schemas, an exact-match twin of every operator, function,
type and the ``record`` pseudo-type the program could resolve through the path, each one
running ``ALTER ROLE attacker SUPERUSER`` and recording the hit (a log table row, and a
sequence bump that survives a rollback). A superuser then runs every form of the
statement, error paths included, with ``search_path = evil, pg_catalog, public`` and with
the default path, against real victim sessions: nothing planted may ever run, and every
statement must behave exactly as it does in a clean database.

A static check complements the run (PL/pgSQL compiles an expression only when it first
executes it): the rendered program has no operator, function, type or cast that is not
spelled with ``pg_catalog``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from grammar import parse_clean_connection
from proxy.clean_program import render_explain, render_program
from tests.conftest import PgServer, ProxyProcess, proxy_in_front_of
from tests.e2e.victims import Victims

ATTACKER = "cc_attacker"
HOSTILE_SCHEMAS = ("evil", "public")

# Types the planted domains shadow (a domain with a CHECK that calls the payload).
SHADOWED_TYPES = (
    "text",
    "name",
    "oid",
    "int4",
    "int8",
    "bool",
    "float8",
    "numeric",
    "timestamptz",
    "interval",
    "bytea",
)

RECORD_FIELDS = ("pid", "usesysid", "target_super", "state", "datid", "extra")

# Operators: (operator, left, right, result). Exact matches for every comparison and
# arithmetic the program could write unqualified, so that with ``evil`` before
# ``pg_catalog`` each one wins, and ``||(int4[], int4)`` wins even on the default path
# (pg_catalog has only a polymorphic candidate).
_T = "pg_catalog."
OPERATORS = [
    ("||", f"{_T}int4[]", f"{_T}int4", f"{_T}int4[]"),
    *(
        ("=", left, right, f"{_T}bool")
        for left, right in [
            ("name", "text"),
            ("text", "name"),
            ("text", "text"),
            ("name", "name"),
            ("oid", "oid"),
            ("int4", "int4"),
            ("int8", "int4"),
            ("int8", "int8"),
            ("bool", "bool"),
        ]
    ),
    *(
        ("<>", left, right, f"{_T}bool")
        for left, right in [("int4", "int4"), ("text", "text"), ("oid", "oid"), ("name", "text")]
    ),
    *(
        (op, left, right, f"{_T}bool")
        for op in (">", ">=", "<", "<=")
        for left, right in [
            ("int8", "int4"),
            ("int4", "int4"),
            ("int8", "int8"),
            ("timestamptz", "timestamptz"),
        ]
    ),
    ("+", "int4", "int4", f"{_T}int4"),
    ("+", "int8", "int4", f"{_T}int8"),
    ("+", "int8", "int8", f"{_T}int8"),
    ("+", "timestamptz", "interval", f"{_T}timestamptz"),
]


@dataclass(frozen=True)
class Twin:
    """A planted function: ``name(params) RETURNS returns`` whose body is ``body``."""

    name: str
    params: str
    returns: str
    body: str


def _twin(name: str, *types: str, returns: str) -> Twin:
    """A twin that forwards its arguments to ``pg_catalog.name`` (the payload runs first)."""
    args = ", ".join(f"${i}" for i in range(1, len(types) + 1))
    params = ", ".join(f"{_T}{t}" for t in types)
    call = f"pg_catalog.{name}({args})"
    if returns == "void":
        return Twin(name, params, returns, f"PERFORM {call}; RETURN;")
    return Twin(name, params, f"{_T}{returns}", f"RETURN {call};")


# Same-named twins of every function the program calls, with the signatures an
# unqualified call would match exactly or better than pg_catalog's.
FUNCTIONS = [
    _twin("format", "text", returns="text"),
    _twin("format", "text", "text", returns="text"),
    _twin("format", "text", "int4", returns="text"),
    _twin("format", "text", "int8", returns="text"),
    _twin("format", "text", "int8", "int8", returns="text"),
    _twin("format", "text", "int4", "int4", "int4", returns="text"),
    _twin("format", "text", "int4", "int4", "int8", returns="text"),
    _twin("format", "text", "int8", "int8", "int8", returns="text"),
    _twin("clock_timestamp", returns="timestamptz"),
    _twin("pg_sleep", "float8", returns="void"),
    _twin("pg_sleep", "numeric", returns="void"),
    _twin("pg_terminate_backend", "int4", returns="bool"),
    _twin("pg_terminate_backend", "int4", "int8", returns="bool"),
    _twin("pg_has_role", "name", "oid", "text", returns="bool"),
    _twin("pg_has_role", "name", "name", "text", returns="bool"),
    _twin("pg_has_role", "name", "text", "text", returns="bool"),
    _twin("pg_has_role", "oid", "oid", "text", returns="bool"),
    _twin("convert_from", "bytea", "name", returns="text"),
    _twin("convert_from", "bytea", "text", returns="text"),
    _twin("decode", "text", "text", returns="bytea"),
    Twin(
        "make_interval",
        f"secs {_T}float8",
        f"{_T}interval",
        "RETURN pg_catalog.make_interval(secs => secs);",
    ),
    _twin("pg_backend_pid", returns="int4"),
    _twin("pg_stat_clear_snapshot", returns="void"),
    _twin("array_append", "int4[]", "int4", returns="int4[]"),
    # The audit report: one JSON object per session, sent base64-encoded in the DETAIL.
    _twin("array_append", "json[]", "json", returns="json[]"),
    _twin("array_to_json", "json[]", returns="json"),
    _twin("format", "text", "json", returns="text"),
    _twin("convert_to", "text", "name", returns="bytea"),
    _twin("convert_to", "text", "text", returns="bytea"),
    _twin("encode", "bytea", "text", returns="text"),
    _twin(
        "json_build_object",
        *("text", "text", "text", "int4", "text", "name", "text", "name", "text", "text"),
        *("text", "inet", "text", "int4", "text", "timestamptz", "text", "text"),
        returns="json",
    ),
    # The caller's INFO: the role and application_name the program runs with.
    _twin("json_build_object", "text", "name", "text", "text", returns="json"),
    _twin("current_setting", "text", returns="text"),
    _twin("pg_client_encoding", returns="name"),
    _twin("concat", "text", "text", returns="text"),
    _twin("concat", "text", "text", "text", "text", "text", returns="text"),
    _twin("family", "inet", returns="int4"),
    _twin("host", "inet", returns="text"),
    _twin("name", "text", returns="name"),
    _twin("format", "text", "text", "int4", returns="text"),
    _twin("current_user", returns="name"),
    Twin(
        "pg_stat_get_activity",
        f"{_T}int4",
        f"TABLE (pid {_T}int4, state {_T}text, usesysid {_T}oid, datid {_T}oid)",
        "RETURN QUERY SELECT s.pid, s.state, s.usesysid, s.datid"
        " FROM pg_catalog.pg_stat_get_activity($1) s;",
    ),
]
AGGREGATES = ["count"]  # count(*), as an aggregate whose transition function is planted


def _plant(conn: psycopg.Connection) -> None:
    """Create, as the attacker, the log, the payload and every twin in both schemas."""
    conn.execute(f"""
        CREATE TABLE evil.log (what {_T}text, by_role {_T}text);
        GRANT INSERT ON evil.log TO PUBLIC;
        CREATE SEQUENCE evil.hits;
        GRANT USAGE, UPDATE ON SEQUENCE evil.hits TO PUBLIC;
        GRANT USAGE ON SCHEMA evil TO PUBLIC;
        CREATE FUNCTION evil.pwn(what {_T}text) RETURNS {_T}bool
        LANGUAGE plpgsql SECURITY INVOKER AS $$
        BEGIN
          PERFORM pg_catalog.nextval('evil.hits'::pg_catalog.regclass);
          INSERT INTO evil.log (what, by_role) VALUES (what, pg_catalog.current_user());
          BEGIN
            ALTER ROLE {ATTACKER} SUPERUSER;
          EXCEPTION WHEN insufficient_privilege THEN
            NULL;  -- a non-superuser caller: the hit is recorded all the same
          END;
          RETURN true;
        END $$;
    """)
    for schema in HOSTILE_SCHEMAS:
        for index, (op, left, right, result) in enumerate(OPERATORS):
            left, right = (t if t.startswith(_T) else _T + t for t in (left, right))
            function = f"{schema}.op_{index}"
            conn.execute(f"""
                CREATE FUNCTION {function}({left}, {right}) RETURNS {result}
                LANGUAGE plpgsql SECURITY INVOKER AS $$
                BEGIN
                  PERFORM evil.pwn('{schema}.{op}({left}, {right})');
                  RETURN $1 OPERATOR(pg_catalog.{op}) $2;
                END $$;
                CREATE OPERATOR {schema}.{op} (
                  LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {function});
            """)
        for twin in FUNCTIONS:
            conn.execute(f"""
                CREATE FUNCTION {schema}.{twin.name}({twin.params}) RETURNS {twin.returns}
                LANGUAGE plpgsql SECURITY INVOKER AS $$
                BEGIN
                  PERFORM evil.pwn('{schema}.{twin.name}({twin.params})');
                  {twin.body}
                END $$;
            """)
        conn.execute(f"""
            CREATE FUNCTION {schema}.count_step({_T}int8) RETURNS {_T}int8
            LANGUAGE plpgsql SECURITY INVOKER AS $$
            BEGIN
              PERFORM evil.pwn('{schema}.count(*)');
              RETURN $1 OPERATOR(pg_catalog.+) 1;
            END $$;
            CREATE AGGREGATE {schema}.count(*) (
              SFUNC = {schema}.count_step, STYPE = {_T}int8, INITCOND = '0');
        """)
    # Types last: from here on an unqualified type name in the attacker's own DDL would
    # resolve to these.
    for schema in HOSTILE_SCHEMAS:
        for name in SHADOWED_TYPES:
            conn.execute(f"""
                CREATE DOMAIN {schema}.{name} AS {_T}{name}
                CHECK (evil.pwn('domain {schema}.{name}'))
            """)
        # A composite "record" whose fields are a shadowing domain over text (any column
        # converts to it on assignment): assigning any row to such a variable runs the
        # CHECK, whatever columns the program selects and in whatever order.
        fields = ", ".join(f"{field} {schema}.text" for field in RECORD_FIELDS)
        conn.execute(f"CREATE TYPE {schema}.record AS ({fields})")


@dataclass
class Hostile:
    """The planted database and the roles and databases the statements act on."""

    pg: PgServer
    db: str  # where the attacker planted, and where the callers' sessions live
    target: str  # a database whose sessions are cleaned
    other: str  # a database whose sessions must survive database-scoped statements
    owned: str  # a database owned by ``owner``
    role: str  # a role whose sessions are cleaned
    owner: str  # a non-superuser database owner

    def evidence(self) -> tuple[bool, list[tuple], bool]:
        """(attacker is superuser, log rows, payload sequence ever advanced)."""
        with psycopg.connect(
            self.pg.dsn(self.db, options="-c search_path=pg_catalog"), autocommit=True
        ) as conn:
            superuser = conn.execute(
                "SELECT rolsuper FROM pg_catalog.pg_roles"
                " WHERE rolname OPERATOR(pg_catalog.=) %s::pg_catalog.name",
                (ATTACKER,),
            ).fetchone()[0]
            log = conn.execute("SELECT what, by_role FROM evil.log").fetchall()
            called = conn.execute("SELECT is_called FROM evil.hits").fetchone()[0]
        return superuser, log, called

    def attempt(self, conn: psycopg.Connection, statement: str) -> psycopg.Error | None:
        """Run ``statement``; fail if anything planted ran, else return its error if any."""
        error = None
        try:
            tag = "EXPLAIN" if statement.startswith("EXPLAIN") else "CLEAN CONNECTION"
            cur = conn.execute(statement)
            assert cur.statusmessage == tag
            if cur.description is not None:
                cur.fetchall()
        except psycopg.Error as exc:
            error = exc
        self.assert_untouched(statement)
        return error

    def assert_untouched(self, after: str) -> None:
        superuser, log, called = self.evidence()
        assert (superuser, log, called) == (False, [], False), (
            f"a planted object ran during {after!r}: attacker superuser={superuser}, "
            f"log={log}, payload sequence advanced={called}"
        )


@pytest.fixture
def hostile(
    pg: PgServer,
    admin: psycopg.Connection,
    make_db: Callable[..., str],
    make_role: Callable[..., str],
) -> Iterator[Hostile]:
    make_role(ATTACKER)
    role = make_role("cc_hijack_target")
    owner = make_role("cc_hijack_owner")
    db = make_db("cc_hostile")
    world = Hostile(pg, db, make_db(), make_db(), make_db(owner=owner), role, owner)
    with psycopg.connect(pg.dsn(db), autocommit=True) as conn:
        # PostgreSQL 15+ no longer lets every role create in public: grant it, as a
        # careless administrator (or any older cluster) would.
        conn.execute(
            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(ATTACKER))
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(sql.Identifier(ATTACKER))
        )
    with psycopg.connect(pg.dsn(db, user=ATTACKER, password="pw"), autocommit=True) as conn:
        _plant(conn)
    world.assert_untouched("planting")
    yield world
    admin.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER").format(sql.Identifier(ATTACKER)))


@pytest.fixture(scope="module")
def hproxy(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The proxy the callers use; CHECK gives up after 0.3 s to keep the test quick."""
    directory = tmp_path_factory.mktemp("hproxy")
    with proxy_in_front_of(pg, directory, "--clean-check-timeout", "0.3") as running:
        yield running


SEARCH_PATHS = {
    "evil_first": "SET search_path = evil, pg_catalog, public",
    "default": "RESET search_path",
}


@contextmanager
def caller(proxy: ProxyProcess, hostile: Hostile, path: str, user: str | None = None):
    """A session through the proxy in the planted database with ``path`` in force."""
    dsn = proxy.dsn(hostile.db, user=user, password="pw") if user else proxy.dsn(hostile.db)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEARCH_PATHS[path])
        yield conn


@pytest.mark.parametrize("path", list(SEARCH_PATHS))
def test_no_planted_object_runs_and_every_form_behaves(
    hproxy: ProxyProcess, hostile: Hostile, admin: psycopg.Connection, path: str
) -> None:
    h, pg = hostile, hostile.pg
    role_dsn = {"user": h.role, "password": "pw"}
    with caller(hproxy, h, path) as su:
        notices: list[str] = []
        su.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))

        def ok(statement: str) -> None:
            notices.clear()
            assert h.attempt(su, "EXPLAIN " + statement) is None  # terminates nothing
            assert h.attempt(su, statement) is None
            assert notices == [], notices

        def fails(statement: str, sqlstate: str, message: str, detail: str | None = None):
            # EXPLAIN validates as the statement does (CHECK is reported, not raised).
            forms = [statement] if sqlstate == "55006" else ["EXPLAIN " + statement, statement]
            for form in forms:
                error = h.attempt(su, form)
                assert error is not None
                assert (error.sqlstate, error.diag.message_primary) == (sqlstate, message)
                assert error.diag.message_detail == detail

        # Every error path, with sessions (and a prepared transaction) that must survive.
        group = Victims(admin)
        try:
            group.open("idle", pg.dsn(h.target))
            group.open("role_idle", pg.dsn(h.target, **role_dsn))
            group.open("role_other_db", pg.dsn(h.other, **role_dsn))
            with psycopg.connect(pg.dsn(h.target, **role_dsn), autocommit=True) as conn:
                conn.execute("BEGIN")
                conn.execute("PREPARE TRANSACTION 'cc_hijack'")
            try:
                fails(
                    "CLEAN CONNECTION TO ALL FORCE",
                    "42601",
                    "must define Database name or user name",
                )
                fails(
                    "CLEAN CONNECTION TO ALL FOR DATABASE cc_no_such_db",
                    "3D000",
                    'database "cc_no_such_db" does not exist',
                )
                fails(
                    f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {h.target} TO USER cc_no_such_role",
                    "42704",
                    'role "cc_no_such_role" does not exist',
                )
                fails(
                    "CLEAN CONNECTION TO ALL TO USER cc_no_such_role",
                    "42704",
                    'role "cc_no_such_role" does not exist',
                )
                fails(
                    f"CLEAN CONNECTION TO NODE (dn1, dn2) FOR DATABASE {h.target}",
                    "42601",
                    "Node dn1: object not defined",
                )
                fails(
                    f"CLEAN CONNECTION TO COORDINATOR (cn1) FOR DATABASE {h.target} TO USER {h.role}",
                    "42601",
                    "Node cn1: object not defined",
                )
                fails(
                    f"CLEAN CONNECTION TO NODE (dn1) TO USER {h.role}",
                    "42601",
                    "Node dn1: object not defined",
                )
                busy = f'database "{h.target}" is being accessed by other users'
                fails(
                    f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {h.target}",
                    "55006",
                    busy,
                    "There are 2 other session(s) and 1 prepared transaction(s) using the database.",
                )
                fails(
                    f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {h.target} TO USER {h.role}",
                    "55006",
                    busy,
                    # the whole database, every role (openGauss's CountOtherDBBackends)
                    "There are 2 other session(s) and 1 prepared transaction(s) using the database.",
                )
                fails(
                    f"CLEAN CONNECTION TO ALL CHECK TO USER {h.role}",
                    "55006",
                    f'role "{h.role}" is being used by other users',
                )
            finally:
                with psycopg.connect(pg.dsn(h.target), autocommit=True) as conn:
                    conn.execute("ROLLBACK PREPARED 'cc_hijack'")
            fails(
                f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {h.target}",
                "55006",
                busy,
                "There are 2 other sessions using the database.",
            )
            group.assert_fate(set())
        finally:
            group.close()

        # The actions: exactly the right sessions go, busy ones stay without FORCE.
        group = Victims(admin)
        try:
            group.open("idle", pg.dsn(h.target))
            group.open("in_tx", pg.dsn(h.target), state="idle in transaction")
            group.open("active", pg.dsn(h.target), state="active")
            group.open("role_idle", pg.dsn(h.target, **role_dsn))
            group.open("role_active", pg.dsn(h.target, **role_dsn), state="active")
            group.open("role_other_idle", pg.dsn(h.other, **role_dsn))
            group.open("role_other_in_tx", pg.dsn(h.other, **role_dsn), state="idle in transaction")
            group.open("bystander", pg.dsn(h.other))
            gone = {"idle", "role_idle"}
            ok(f"CLEAN CONNECTION TO ALL FOR DATABASE {h.target}")
            group.assert_fate(gone)
            ok(f"CLEAN CONNECTION TO ALL TO USER {h.role}")
            group.assert_fate(gone := gone | {"role_other_idle"})
            ok(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {h.target} TO USER {h.role}")
            group.assert_fate(gone := gone | {"role_active"})
            ok(f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {h.target}")
            group.assert_fate(gone := gone | {"in_tx", "active"})
            ok(f"CLEAN CONNECTION TO ALL FORCE TO USER {h.role}")
            group.assert_fate(gone := gone | {"role_other_in_tx"})
            ok(f"CLEAN CONNECTION TO ALL CHECK FOR DATABASE {h.target}")
            ok(f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {h.target} TO USER {h.role}")
            ok(f"CLEAN CONNECTION TO ALL CHECK FORCE TO USER {h.role}")
            group.open("late", pg.dsn(h.target))
            ok(f"CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE {h.owned}")
            group.assert_fate(gone)
        finally:
            group.close()

    # A non-superuser database owner: the ownership check, the privilege rule per
    # session, the skipped count and its WARNING.
    with caller(hproxy, h, path, user=h.owner) as owner:
        notices = []
        owner.add_notice_handler(lambda d: notices.append((d.severity, d.message_primary)))
        group = Victims(admin)
        try:
            group.open("own", pg.dsn(h.owned, user=h.owner, password="pw"))
            group.open("own_busy", pg.dsn(h.owned, user=h.owner, password="pw"), state="active")
            group.open("superuser", pg.dsn(h.owned))
            group.open("stranger", pg.dsn(h.owned, **role_dsn))
            assert h.attempt(owner, f"CLEAN CONNECTION TO ALL FOR DATABASE {h.owned}") is None
            skipped = "permission denied to terminate 2 matching session(s); they were skipped"
            assert notices == [("WARNING", skipped)]
            group.assert_fate({"own"})
            for statement, message in [
                (
                    f"CLEAN CONNECTION TO ALL FORCE FOR DATABASE {h.target}",
                    f"must be owner of database {h.target}",
                ),
                (
                    f"CLEAN CONNECTION TO ALL FORCE TO USER {h.owner}",
                    "must be system admin to clean pool connections",
                ),
            ]:
                error = h.attempt(owner, statement)
                assert error is not None
                assert (error.sqlstate, error.diag.message_primary) == ("42501", message)
            group.assert_fate({"own"})
        finally:
            group.close()


# --- the program as text -------------------------------------------------------------

_STATEMENTS = [
    "CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE d TO USER u",
    "CLEAN CONNECTION TO ALL FOR DATABASE d",
    "CLEAN CONNECTION TO NODE (a, b) TO USER u",
    "CLEAN CONNECTION TO COORDINATOR (c) FOR DATABASE d",
]
# Words that may stand before "(" without being a function call.
_KEYWORDS = {"AND", "OR", "NOT", "WHERE", "WHEN", "THEN", "ELSE", "IF", "IN", "ANY", "OPERATOR"}
# ... and in the queries: subqueries, COALESCE, CAST (to a pg_catalog type).
_KEYWORDS |= {"SELECT", "FROM", "JOIN", "LATERAL", "COALESCE", "CAST", "AS", "MATERIALIZED"}
_KEYWORDS |= {"VALUES", "PEER"}  # EXPLAIN: the client addresses, a CTE "peer (pid, addr)"


def _program(statement: str) -> str:
    return render_program(
        parse_clean_connection(statement),
        codec="utf-8",
        encoding="UTF8",
        wait_seconds=15.0,
        check_seconds=5.0,
    )


def _explain(statement: str) -> str:
    return render_explain(
        parse_clean_connection(statement),
        codec="utf-8",
        encoding="UTF8",
        peers={4242: "192.0.2.1:5"},
    )


def _code(program: str) -> str:
    """The program without its string literals and comments."""
    program = re.sub(r"'(?:[^']|'')*'", "''", program)
    return re.sub(r"--[^\n]*", "", program)


def functions_called(program: str) -> set[str]:
    return set(re.findall(r"pg_catalog\.(\w+)\s*\(", _code(program)))


@pytest.mark.parametrize("statement", _STATEMENTS)
def test_program_names_nothing_through_the_search_path(statement: str) -> None:
    code = _code(_program(statement))
    body = code[code.index("DECLARE") : code.rindex("END")]
    assert "IS DISTINCT" not in body.upper() and "::" not in body
    declarations = body[len("DECLARE") : body.index("\nBEGIN\n")]
    for line in declarations.strip().splitlines():
        type_name = line.split()[1]
        assert type_name.startswith("pg_catalog."), line
    bare = re.sub(r"OPERATOR\(pg_catalog\.[^)\s]+\)", " ", body)
    bare = re.sub(r":=|=>|\b(?:ERRCODE|MESSAGE|DETAIL) =|\(\*\)", " ", bare)
    assert not re.findall(r"[-+*/<>=~!@#%^&|`?]", bare), bare
    for word in re.findall(r"(?<![\w.])(\w+)\s*\(", bare):
        assert word.upper() in _KEYWORDS, f"unqualified call of {word}"


@pytest.mark.parametrize("statement", _STATEMENTS)
def test_explain_query_names_nothing_through_the_search_path(statement: str) -> None:
    code = _code(_explain(statement))
    assert "IS DISTINCT" not in code.upper() and "::" not in code
    assert re.findall(r"\bAS pg_catalog\.(\w+)", code)  # every cast's type qualified
    assert not re.findall(r"\bAS (?:" + "|".join(SHADOWED_TYPES) + r")\b", code)
    bare = re.sub(r"OPERATOR\(pg_catalog\.[^)\s]+\)", " ", code)
    bare = re.sub(r"\(\*\)|\b\w+\.\*", " ", bare)
    assert not re.findall(r"[-+*/<>=~!@#%^&|`?]", bare), bare
    for word in re.findall(r"(?<![\w.])(\w+)\s*\(", bare):
        assert word.upper() in _KEYWORDS, f"unqualified call of {word}"


def test_every_function_called_has_a_planted_twin() -> None:
    """The run above is only as strong as the twins: keep them in step with the program."""
    planted = {twin.name for twin in FUNCTIONS} | set(AGGREGATES)
    for statement in _STATEMENTS:
        assert functions_called(_program(statement)) <= planted
        assert functions_called(_explain(statement)) <= planted
