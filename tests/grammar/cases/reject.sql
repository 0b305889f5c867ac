--# Format: a case is the SQL lines up to a "-- error: <message> @ <1-based position>" line.
clean connection
-- error: syntax error at end of input @ 17

CLEAN CONNECTION;
-- error: syntax error at or near ";" @ 17

clean connection to
-- error: syntax error at end of input @ 20

clean connection all
-- error: syntax error at or near "all" @ 18

clean connection to all force check
-- error: syntax error at or near "check" @ 31

clean connection to all check check
-- error: syntax error at or near "check" @ 31

clean connection to node (a) check
-- error: syntax error at or near "check" @ 30

clean connection to coordinator (a) force
-- error: syntax error at or near "force" @ 37

clean connection to node a
-- error: syntax error at or near "a" @ 26

clean connection to node
-- error: syntax error at end of input @ 25

clean connection to node ()
-- error: syntax error at or near ")" @ 27

clean connection to node (a,)
-- error: syntax error at or near ")" @ 29

clean connection to node (a b)
-- error: syntax error at or near "b" @ 29

clean connection to node (a
-- error: syntax error at end of input @ 28

clean connection to node (a;
-- error: syntax error at or near ";" @ 28

clean connection to all for 'db'
-- error: syntax error at or near "'db'" @ 29

clean connection to all for database 'db'
-- error: syntax error at or near "'db'" @ 38

clean connection to all to user 'bob'
-- error: syntax error at or near "'bob'" @ 33

clean connection to all for 42
-- error: syntax error at or near "42" @ 29

clean connection to node (1)
-- error: syntax error at or near "1" @ 27

clean connection to all for database select
-- error: syntax error at or near "select" @ 38

clean connection to all for table
-- error: syntax error at or near "table" @ 29

clean connection to all to user user
-- error: syntax error at or near "user" @ 33

clean connection to all to left
-- error: syntax error at or near "left" @ 28

clean connection to all to bob for db
-- error: syntax error at or near "for" @ 32

clean connection to all for db for db2
-- error: syntax error at or near "for" @ 32

clean connection to all for db garbage
-- error: syntax error at or near "garbage" @ 32

clean connection to all; select 1
-- error: syntax error at or near "select" @ 26

clean connection to all for
-- error: syntax error at end of input @ 28

clean connection to all to user
-- error: syntax error at end of input @ 32

clean connection to all to
-- error: syntax error at end of input @ 27

clean connection to "all"
-- error: syntax error at or near ""all"" @ 21

clean connection to "node" (a)
-- error: syntax error at or near ""node"" @ 21

clean connection to all for "" 
-- error: zero-length delimited identifier at or near """" @ 29

clean connection to all for "Unterminated
-- error: unterminated quoted identifier at or near ""Unterminated" @ 29

clean connection to all to user u -- note
garbage
-- error: syntax error at or near "garbage" @ 43

clean connection to all for db to   
-- error: syntax error at end of input @ 37

clean connection to all for $1
-- error: syntax error at or near "$1" @ 29

--# U& identifier errors: openGauss's scan.l (litbuf_udeescape, xuistop1/xuistop2); the
--# text runs to the end of what the scanner rule matched
clean connection to all for U&"d\006xt"
-- error: invalid Unicode escape value at or near "\006xt"" @ 33

--# openGauss fails later on the NUL (invalid byte sequence); the proxy reports it here
clean connection to all for U&"d\0000"
-- error: invalid Unicode escape value at or near "\0000"" @ 33

clean connection to all for U&"ab\DC00"
-- error: invalid Unicode surrogate pair at or near "U&"ab\DC00"" @ 29

clean connection to all for U&"\D800x"
-- error: invalid Unicode surrogate pair at or near "x"" @ 37

clean connection to all for U&"\D800"
-- error: invalid Unicode surrogate pair at or near """ @ 37

clean connection to all for U&""
-- error: zero-length delimited identifier at or near "U&""" @ 29

clean connection to all for U&"a" uescape x
-- error: syntax error at or near "uescape" @ 35

clean connection to all for U&"a" uescape
-- error: syntax error at or near "uescape" @ 35

clean connection to all for U&"a" uescape '+'
-- error: invalid Unicode escape character at or near "+'" @ 44

clean connection to all for U&"a" uescape '!!'
-- error: syntax error at or near "uescape" @ 35

clean connection to all for d U&"a" uescape '!'
-- error: syntax error at or near "U&"a" uescape '!'" @ 31

clean connection to U&"all"
-- error: syntax error at or near "U&"all"" @ 21

clean connection to node (U&"x#0041" /* c */ uescape /* d */ '#', y)
-- error: syntax error at or near "uescape" @ 46

--# statements starting with "clean" that are not CLEAN CONNECTION: openGauss's token
CLEAN CONNECTIONS TO ALL FOR sales
-- error: syntax error at or near "CONNECTIONS" @ 7

CLEAN
-- error: syntax error at end of input @ 6

clean;
-- error: syntax error at or near ";" @ 6

CLEAN "connection" to all
-- error: syntax error at or near ""connection"" @ 7

clean 'connection'
-- error: syntax error at or near "'connection'" @ 7

clean#x connection to all
-- error: syntax error at or near "clean#x" @ 1

clean$ connection to all
-- error: syntax error at or near "clean$" @ 1

clean table t
-- error: syntax error at or near "table" @ 7

--# words openGauss reserves (kwlist.h) are not names, though PostgreSQL allows them
clean connection to all for rownum
-- error: syntax error at or near "rownum" @ 29

clean connection to all for database excluded
-- error: syntax error at or near "excluded" @ 38

clean connection to all to user sysdate
-- error: syntax error at or near "sysdate" @ 33

clean connection to node (minus)
-- error: syntax error at or near "minus" @ 27

clean connection to all to user notnull
-- error: syntax error at or near "notnull" @ 33

--# numbers end where openGauss's scanner ends them
clean connection to all for 9lives
-- error: syntax error at or near "9" @ 29

clean connection to all for 0x1f
-- error: syntax error at or near "0" @ 29

clean connection to all for 1e
-- error: syntax error at or near "1" @ 29

clean connection to all for 1.2.3
-- error: syntax error at or near "1.2.3" @ 29

clean connection to all for #x
-- error: syntax error at or near "#" @ 29

clean connection to all for :name
-- error: syntax error at or near ":name" @ 29

--# scanner errors at openGauss's token (scan.l)
clean connection to all for database ""
-- error: zero-length delimited identifier at or near """" @ 38

clean connection to all /* never closed
-- error: unterminated /* comment at or near "/* never closed" @ 25

clean connection to all /* nested /* */ still open
-- error: unterminated /* comment at or near "/* nested /* */ still open" @ 25

clean connection to all to user "bob
-- error: unterminated quoted identifier at or near ""bob" @ 33

clean connection to all for 'db
-- error: unterminated quoted string at or near "'db" @ 29

clean connection to all for $q$db
-- error: unterminated dollar-quoted string at or near "$q$db" @ 29

clean connection to all for b'01
-- error: unterminated bit string literal at or near "b'01" @ 29

clean connection to all for x'1f
-- error: unterminated hexadecimal string literal at or near "x'1f" @ 29

--# a scanner error after the failing token is never reached
clean connection to all garbage "never closed
-- error: syntax error at or near "garbage" @ 25

--# ... unless openGauss's lookahead filter (parser.cpp base_yylex) read it ahead
clean connection to all check nulls 'never closed
-- error: unterminated quoted string at or near "'never closed" @ 37

--# two-word tokens of that filter fail at their second word
clean connection to all force index
-- error: syntax error at or near "index" @ 31

clean connection to all check nulls first
-- error: syntax error at or near "first" @ 37

clean connection to all for database nulls first
-- error: syntax error at or near "first" @ 44

clean connection to all for partition for x
-- error: syntax error at or near "for" @ 39

clean connection to all to user lateral x(1)
-- error: syntax error at or near "lateral" @ 33

clean connection to all for declare x cursor
-- error: syntax error at or near "declare" @ 29
