--# Format: a case is the SQL lines up to a "-- expect: <to_sql()>" line.
--# Lines starting with "--#" are notes; blank lines between cases are ignored.
clean connection to all
-- expect: CLEAN CONNECTION TO ALL

CLEAN CONNECTION TO ALL;
-- expect: CLEAN CONNECTION TO ALL

CLEAN CONNECTION TO ALL CHECK
-- expect: CLEAN CONNECTION TO ALL CHECK

CLEAN CONNECTION TO ALL FORCE
-- expect: CLEAN CONNECTION TO ALL FORCE

Clean Connection To All Check Force For Database mydb To User bob;
-- expect: CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE "mydb" TO USER "bob"

clean connection to all for mydb
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "mydb"

clean connection to all for database mydb
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "mydb"

clean connection to all to bob
-- expect: CLEAN CONNECTION TO ALL TO USER "bob"

clean connection to all to user bob
-- expect: CLEAN CONNECTION TO ALL TO USER "bob"

clean connection to all for db1 to bob
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "db1" TO USER "bob"

cLeAn CoNnEcTiOn tO aLl cHeCk FoRcE fOr DaTaBaSe MyDb tO uSeR BoB
-- expect: CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE "mydb" TO USER "bob"

clean connection to node (n1)
-- expect: CLEAN CONNECTION TO NODE ("n1")

clean connection to node (n1, N2, "N3")
-- expect: CLEAN CONNECTION TO NODE ("n1", "n2", "N3")

CLEAN CONNECTION TO COORDINATOR (cn1) FOR DATABASE d TO USER u;
-- expect: CLEAN CONNECTION TO COORDINATOR ("cn1") FOR DATABASE "d" TO USER "u"

clean connection to coordinator(a,b,c)for database d to user u;
-- expect: CLEAN CONNECTION TO COORDINATOR ("a", "b", "c") FOR DATABASE "d" TO USER "u"

--# comments and whitespace between every token
clean/*1*/connection/* 2 /* nested */ still 2 */to -- 3
all/*4*/check	force
for --5
database/**/d to
  user
"U" -- trailing comment
;
-- expect: CLEAN CONNECTION TO ALL CHECK FORCE FOR DATABASE "d" TO USER "U"

/* leading comment */ clean connection to node /*x*/ ( /*y*/ a /*z*/ , b -- w
) for d
-- expect: CLEAN CONNECTION TO NODE ("a", "b") FOR DATABASE "d"

--# quoted identifiers keep case and undouble ""
clean connection to all for database "My ""Quoted"" Db" to user "Bob Smith"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "My ""Quoted"" Db" TO USER "Bob Smith"

clean connection to all for database "x';drop table t;--"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "x';drop table t;--"

--# unicode: only ASCII letters fold
clean connection to all for database ÜberDB to user "Ünïcødé"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "Überdb" TO USER "Ünïcødé"

clean connection to node (ÉTÉ, straße)
-- expect: CLEAN CONNECTION TO NODE ("ÉtÉ", "straße")

--# U& identifiers, with and without UESCAPE
clean connection to all for database U&"d\0061t\+000061"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "data"

clean connection to all for database u&"d!0061t" UESCAPE '!' to user U&"\00DCber"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "dat" TO USER "Über"

clean connection to all for database U&"a\\b" to user U&"\D83D\DE00"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "a\b" TO USER "😀"

--# openGauss's scanner takes UESCAPE only after spaces and -- comments (scan.l uescape)
clean connection to node (U&"x#0041" -- c
 uescape -- d
 '#', y)
-- expect: CLEAN CONNECTION TO NODE ("xA", "y")

clean connection to all for U&"q""x"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "q""x"

--# unreserved and col_name keywords are ColId
clean connection to all for database database
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "database"

clean connection to all for database
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "database"

clean connection to all for database;
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "database"

clean connection to all for database to user u
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "database" TO USER "u"

clean connection to all for connection to force
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "connection" TO USER "force"

clean connection to all for int to user varchar
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "int" TO USER "varchar"

clean connection to node (node, coordinator, clean)
-- expect: CLEAN CONNECTION TO NODE ("node", "coordinator", "clean")

clean connection to all for "select" to user "user"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "select" TO USER "user"

--# long names are truncated to 63 bytes at a character boundary
clean connection to all for aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffffgggggggggg
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeeeffffffffffggg"

clean connection to all for "ééééééééééééééééééééééééééééééééééé"
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "ééééééééééééééééééééééééééééééé"

clean connection to all for db /* trailing */ -- and another
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "db"

--# openGauss identifiers: "#" and "$" continue a name (scan.l ident_cont)
clean connection to all for database sales#2024
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "sales#2024"

clean connection to all for Sales#Q$2024 to user Ops#1
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "sales#q$2024" TO USER "ops#1"

clean connection to node (cn#1, dn$2#)
-- expect: CLEAN CONNECTION TO NODE ("cn#1", "dn$2#")

clean connection to all for db#--comment
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "db#"

clean connection to all for x#/*c*/to y
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "x#" TO USER "y"

--# words openGauss does not reserve are names (kwlist.h), though PostgreSQL reserves them
clean connection to all for database isnull
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "isnull"

clean connection to all to user lateral
-- expect: CLEAN CONNECTION TO ALL TO USER "lateral"

clean connection to all for system_user
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "system_user"

clean connection to all for ISNULL to LATERAL;
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "isnull" TO USER "lateral"

clean connection to node (isnull, lateral, system_user)
-- expect: CLEAN CONNECTION TO NODE ("isnull", "lateral", "system_user")

--# gram.y lists SELF under unreserved_keyword (kwlist.h says reserved)
clean connection to all for self
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "self"

--# keywords of openGauss only, unreserved there
clean connection to all for database clean to user node
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "clean" TO USER "node"

clean connection to all for nulls to user lateral
-- expect: CLEAN CONNECTION TO ALL FOR DATABASE "nulls" TO USER "lateral"
