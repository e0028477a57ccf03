/*
 * db_check: read-only queries on a test server's SQLite file, the first row
 * of each returned as text.
 */
#include "db_check.h"

#include <errno.h>
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
static int ns_db_first(ns_server *s, const char *sql, va_list ap, ns_dbrow **out)
{
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
