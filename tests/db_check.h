/*
 * db_check: reads a test server's SQLite file (or PostgreSQL database)
 * directly, read-only, on a fresh connection per query, for tests whose
 * point is what is durable (rows written, their values), not what the
 * server answers; ns_db_exec alone writes. The functions report on stderr
 * and never assert.
 */
#ifndef NODESTATE_DB_CHECK_H
#define NODESTATE_DB_CHECK_H

#include <stdbool.h>

#include "server.h"

/*
 * Runs sql on a fresh read-only connection to the database, binding the
 * NULL-terminated string arguments to its ?s in order, and returns the
 * first column of the first row as malloc'd text. NULL when there is no row,
 * the value is NULL, or on error (*err, when given, is set true on error).
 */
char *ns_db_text(ns_server *s, bool *err, const char *sql, ...)
    __attribute__((sentinel));
/* The same as an integer; -1 when there is no row, a NULL or an error. */
long long ns_db_int(ns_server *s, const char *sql, ...)
    __attribute__((sentinel));

/*
 * Runs sql (no arguments, no rows wanted; several statements allowed) on a
 * fresh READ-WRITE connection to the database, whichever store it is, for a
 * test that changes what is stored behind a stopped server's back (ages
 * rows, say). 0, or -1 (reported on stderr).
 */
int ns_db_exec(ns_server *s, const char *sql);

/* The first row of a query, every column as text (NULL for SQL NULL). */
typedef struct ns_dbrow {
    int ncols;
    char **names;
    char **values;
} ns_dbrow;
/* Like ns_db_text but the whole first row; NULL when no row or on error. */
ns_dbrow *ns_db_row(ns_server *s, const char *sql, ...)
    __attribute__((sentinel));
/* Column name's text, or NULL (SQL NULL or no such column). */
const char *ns_dbrow_get(const ns_dbrow *row, const char *name);
bool ns_dbrow_has(const ns_dbrow *row, const char *name);
void ns_dbrow_free(ns_dbrow *row);

#endif
