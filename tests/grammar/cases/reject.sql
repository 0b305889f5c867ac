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

--# U& identifier errors, positions as PostgreSQL 15 reports them
clean connection to all for U&"d\006xt"
-- error: invalid Unicode escape @ 33

clean connection to all for U&"d\0000"
-- error: invalid Unicode escape value @ 33

clean connection to all for U&"ab\DC00"
-- error: invalid Unicode surrogate pair @ 34

clean connection to all for U&"\D800x"
-- error: invalid Unicode surrogate pair @ 37

clean connection to all for U&"\D800"
-- error: invalid Unicode surrogate pair @ 37

clean connection to all for U&"a" uescape x
-- error: UESCAPE must be followed by a simple string literal at or near "x" @ 43

clean connection to all for U&"a" uescape
-- error: UESCAPE must be followed by a simple string literal at end of input @ 42

clean connection to all for U&"a" uescape '+'
-- error: invalid Unicode escape character at or near "'+'" @ 43

clean connection to all for U&"a" uescape '!!'
-- error: invalid Unicode escape character at or near "'!!'" @ 43

clean connection to all for d U&"a" uescape '!'
-- error: syntax error at or near "U&"a" uescape '!'" @ 31

clean connection to U&"all"
-- error: syntax error at or near "U&"all"" @ 21
