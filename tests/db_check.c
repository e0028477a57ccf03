/*
 * db_check: read-only queries on a test server's SQLite file (or its
 * PostgreSQL database, see pg_check.h), the first row of each returned as
 * text.
 */
#include "db_check.h"

#include "pg_check.h"

#include <errno.h>
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ns_dbrow_release(ns_dbrow *row)
{
    if (row == NULL)
        return;
    for (int i = 0; i < row->ncols; i++) {
        if (row->names != NULL)
            free(row->names[i]);
        if (row->values != NULL)
            free(row->values[i]);
    }
    free(row->names);
    free(row->values);
    free(row);
}

void ns_dbrow_free(ns_dbrow *row)
{
    ns_dbrow_release(row);
}

/*
 * Runs sql with the string arguments in ap and packs the first row into *out.
 * Returns 1 with a row, 0 with none, -1 on error (reported on stderr).
 */
/*
 * ns_db_first on PostgreSQL: the same SQL with each ? made $N, SQLite's
 * group_concat made string_agg (same arguments), and a boolean column read
 * as SQLite stores it ("1" / "0"), so a test's query and checks serve both.
 */
static int ns_db_first_pg(ns_server *s, const char *sql, va_list ap, ns_dbrow **out)
{
    char q[4096];
    const char *params[32];
    int nparams = 0, rc = -1;
    size_t n = 0;
    ns_dbrow *row = NULL;
    PGresult *res = NULL;
    PGconn *c = PQconnectdb(ns_db_path(s));
    *out = NULL;
    for (const char *p = sql; *p && n + 16 < sizeof q; p++) {
        if (*p == '?') {
            if (nparams == 32)
                goto fail_quiet;
            params[nparams] = va_arg(ap, const char *);
            if (params[nparams] == NULL) {
                fprintf(stderr, "harness: %s needs more arguments\n", sql);
                goto fail_quiet;
            }
            n += (size_t)snprintf(q + n, sizeof q - n, "$%d", ++nparams);
        } else if (strncmp(p, "group_concat(", 13) == 0) {
            n += (size_t)snprintf(q + n, sizeof q - n, "string_agg(");
            p += 12;
        } else {
            q[n++] = *p;
        }
    }
    q[n] = '\0';
    if (PQstatus(c) != CONNECTION_OK)
        goto fail;
    res = PQexecParams(c, q, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto fail;
    if (PQntuples(res) == 0) {
        rc = 0;
        goto out;
    }
    int ncols = PQnfields(res);
    row = calloc(1, sizeof *row);
    if (row == NULL)
        goto fail_quiet;
    row->names = calloc((size_t)ncols + 1, sizeof *row->names);
    row->values = calloc((size_t)ncols + 1, sizeof *row->values);
    if (row->names == NULL || row->values == NULL)
        goto fail_quiet;
    row->ncols = ncols;
    for (int i = 0; i < ncols; i++) {
        if ((row->names[i] = strdup(PQfname(res, i))) == NULL)
            goto fail_quiet;
        if (PQgetisnull(res, 0, i))
            continue;
        const char *v = PQgetvalue(res, 0, i);
        if (PQftype(res, i) == 16 /* BOOLOID */)
            v = v[0] == 't' ? "1" : "0";
        if ((row->values[i] = strdup(v)) == NULL)
            goto fail_quiet;
    }
    *out = row;
    row = NULL;
    rc = 1;
    goto out;
fail:
    fprintf(stderr, "harness: postgresql %s: %s", q,
            res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(c));
fail_quiet:
    rc = -1;
out:
    ns_dbrow_release(row);
    PQclear(res);
    PQfinish(c);
    return rc;
}

static int ns_db_first(ns_server *s, const char *sql, va_list ap, ns_dbrow **out)
{
    if (ns_pg_uri(ns_db_path(s)))
        return ns_db_first_pg(s, sql, ap, out);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    ns_dbrow *row = NULL;
    int rc = -1;
    *out = NULL;
    if (sqlite3_open_v2(ns_db_path(s), &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_busy_timeout(db, 5000) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    int nparams = sqlite3_bind_parameter_count(st);
    for (int i = 1; i <= nparams; i++) {
        const char *arg = va_arg(ap, const char *);
        if (arg == NULL) {
            fprintf(stderr, "harness: %s needs %d arguments\n", sql, nparams);
            goto fail_quiet;
        }
        if (sqlite3_bind_text(st, i, arg, -1, SQLITE_TRANSIENT) != SQLITE_OK)
            goto fail;
    }
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = 0;
        goto out;
    }
    if (step != SQLITE_ROW)
        goto fail;
    row = calloc(1, sizeof *row);
    if (row == NULL)
        goto fail_quiet;
    int ncols = sqlite3_column_count(st);
    row->names = calloc((size_t)ncols + 1, sizeof *row->names);
    row->values = calloc((size_t)ncols + 1, sizeof *row->values);
    if (row->names == NULL || row->values == NULL)
        goto fail_quiet;
    row->ncols = ncols;
    for (int i = 0; i < ncols; i++) {
        const char *name = sqlite3_column_name(st, i);
        row->names[i] = strdup(name != NULL ? name : "");
        if (row->names[i] == NULL)
            goto fail_quiet;
        if (sqlite3_column_type(st, i) != SQLITE_NULL) {
            const unsigned char *v = sqlite3_column_text(st, i);
            if (v == NULL)
                goto fail;
            row->values[i] = strdup((const char *)v);
            if (row->values[i] == NULL)
                goto fail_quiet;
        }
    }
    *out = row;
    row = NULL;
    rc = 1;
    goto out;

fail:
    fprintf(stderr, "harness: sqlite %s: %s\n", sql,
            db != NULL ? sqlite3_errmsg(db) : "cannot open");
fail_quiet:
    rc = -1;
out:
    ns_dbrow_release(row);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

int ns_db_exec(ns_server *s, const char *sql)
{
    int rc = -1;
    if (ns_pg_uri(ns_db_path(s))) {
        PGconn *c = PQconnectdb(ns_db_path(s));
        PGresult *res = NULL;
        if (PQstatus(c) == CONNECTION_OK) {
            res = PQexec(c, sql);
            ExecStatusType st = PQresultStatus(res);
            rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
        }
        if (rc != 0)
            fprintf(stderr, "harness: postgresql %s: %s", sql,
                    res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(c));
        PQclear(res);
        PQfinish(c);
        return rc;
    }
    sqlite3 *db = NULL;
    char *err = NULL;
    if (sqlite3_open_v2(ns_db_path(s), &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
        sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK)
        rc = 0;
    if (rc != 0)
        fprintf(stderr, "harness: sqlite %s: %s\n", sql,
                err != NULL ? err : db != NULL ? sqlite3_errmsg(db) : "cannot open");
    sqlite3_free(err);
    if (sqlite3_close(db) != SQLITE_OK)
        rc = -1;
    return rc;
}

char *ns_db_text(ns_server *s, bool *err, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    if (err != NULL)
        *err = rc < 0;
    char *text = NULL;
    if (rc == 1 && row->ncols > 0 && row->values[0] != NULL) {
        text = row->values[0];
        row->values[0] = NULL;
    }
    ns_dbrow_release(row);
    return text;
}

long long ns_db_int(ns_server *s, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    long long v = -1;
    if (rc == 1 && row->ncols > 0 && row->values[0] != NULL) {
        char *end;
        errno = 0;
        v = strtoll(row->values[0], &end, 10);
        if (errno != 0 || *end != '\0')
            v = -1;
    }
    ns_dbrow_release(row);
    return v;
}

ns_dbrow *ns_db_row(ns_server *s, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    return rc == 1 ? row : NULL;
}

const char *ns_dbrow_get(const ns_dbrow *row, const char *name)
{
    for (int i = 0; row != NULL && i < row->ncols; i++)
        if (strcmp(row->names[i], name) == 0)
            return row->values[i];
    return NULL;
}

bool ns_dbrow_has(const ns_dbrow *row, const char *name)
{
    for (int i = 0; row != NULL && i < row->ncols; i++)
        if (strcmp(row->names[i], name) == 0)
            return true;
    return false;
}
