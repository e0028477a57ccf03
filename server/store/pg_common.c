/*
 * pg_common: what both PostgreSQL connections use: connecting, error text,
 * the array literals the batch is sent in, and decoding a result row.
 */
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pg_buf_put(pg_buf *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (grown == NULL) {
            b->oom = true;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

void pg_buf_str(pg_buf *b, const char *s)
{
    pg_buf_put(b, s, strlen(s));
}

void pg_buf_array_open(pg_buf *b)
{
    b->elems = 0;
    pg_buf_put(b, "{", 1);
}

/* Inside a quoted element only '"' and '\\' need a backslash. */
void pg_buf_array_elem(pg_buf *b, const char *v)
{
    if (b->elems++)
        pg_buf_put(b, ",", 1);
    if (v == NULL) {
        pg_buf_put(b, "NULL", 4);
        return;
    }
    pg_buf_put(b, "\"", 1);
    const char *run = v;
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\') {
            pg_buf_put(b, run, (size_t)(c - run));
            pg_buf_put(b, "\\", 1);
            run = c;
        }
    }
    pg_buf_str(b, run);
    pg_buf_put(b, "\"", 1);
}

void pg_buf_array_close(pg_buf *b)
{
    pg_buf_put(b, "}", 1);
}

void pg_buf_free(pg_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/*
 * The URI as it may be shown: a password in it ("user:secret@host")
 * becomes "***", since messages end up in logs.
 */
static void pg_uri_shown(const char *uri, char *out, size_t outlen)
{
    const char *scheme = strstr(uri, "://");
    const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    const char *colon = NULL;
    if (at) {
        for (const char *c = scheme + 3; c < at; c++)
            if (*c == ':') {
                colon = c;
                break;
            }
    }
    if (colon)
        snprintf(out, outlen, "%.*s:***%s", (int)(colon - uri), uri, at);
    else
        snprintf(out, outlen, "%s", uri);
}

/* libpq's messages end in a newline; log lines must not. */
static void pg_chomp(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
}

static void pg_ignore_notice(void *ctx, const char *message)
{
    (void)ctx;
    (void)message;
}

PGconn *pg_connect(const char *uri, char *err, size_t errlen)
{
    char shown[1024];
    pg_uri_shown(uri, shown, sizeof shown);
    PGconn *conn = PQconnectdb(uri);
    if (conn == NULL) {
        snprintf(err, errlen, "%s: out of memory", shown);
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(err, errlen, "%s: connecting: %s", shown, PQerrorMessage(conn));
        pg_chomp(err);
        PQfinish(conn);
        return NULL;
    }
    /*
     * The server's notices ("relation already exists, skipping" when a second
     * instance creates the schema) would land on stderr, in the middle of
     * the log; nothing in them needs telling.
     */
    PQsetNoticeProcessor(conn, pg_ignore_notice, NULL);
    /* Our text is UTF-8 whatever the server's default for clients is. */
    if (PQsetClientEncoding(conn, "UTF8") != 0) {
        snprintf(err, errlen, "%s: setting client encoding: %s", shown,
                 PQerrorMessage(conn));
        pg_chomp(err);
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

void pg_set_err(char *out, size_t outlen, PGconn *conn, const PGresult *res,
                const char *what)
{
    /* The primary message and SQLSTATE alone: the full text quotes the statement. */
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (primary != NULL) {
        snprintf(out, outlen, "%s: %s (SQLSTATE %s)", what, primary, state ? state : "?");
        return;
    }
    const char *msg = res ? PQresultErrorMessage(res) : "";
    if (msg == NULL || msg[0] == '\0')
        msg = conn ? PQerrorMessage(conn) : "unknown error";
    if (msg == NULL || msg[0] == '\0')
        msg = "unknown error";
    snprintf(out, outlen, "%s: %s", what, msg);
    pg_chomp(out);
}

int pg_exec(PGconn *conn, const char *sql, char *err, size_t errlen,
            const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int ret = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
    if (ret != 0)
        pg_set_err(err, errlen, conn, res, what);
    PQclear(res);
    return ret;
}

int pg_query_int(PGconn *conn, const char *sql, int nparams,
                 const char *const *params, int64_t *out, char *err,
                 size_t errlen, const char *what)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    int ret = -1;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_set_err(err, errlen, conn, res, what);
        goto out;
    }
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
        ret = 1;
        goto out;
    }
    char *end;
    long long v = strtoll(PQgetvalue(res, 0, 0), &end, 10);
    if (*end != '\0') {
        snprintf(err, errlen, "%s: not an integer", what);
        goto out;
    }
    *out = v;
    ret = 0;
out:
    PQclear(res);
    return ret;
}

bool pg_row_level(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL)
        return false;
    /* 22 data exception, 23 integrity constraint, 54 program limit exceeded. */
    return strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
           strncmp(state, "54", 2) == 0;
}

/*
 * The readers of NS_NODE_FIELDS' kinds, pg_read_<kind>: 0, or 1 for a value
 * we did not write (refused rather than guessed at).
 */
static const char *pg_value(const PGresult *res, int i, int col)
{
    return PQgetisnull(res, i, col) ? NULL : PQgetvalue(res, i, col);
}

static int pg_read_id(const PGresult *res, int i, int col, const char **out)
{
    *out = pg_value(res, i, col);
    return *out != NULL ? 0 : 1;
}

static int pg_read_status(const PGresult *res, int i, int col, ns_status *out)
{
    const char *v = pg_value(res, i, col);
    return v != NULL && model_status_parse(v, out) == 0 ? 0 : 1;
}

static int pg_read_int(const PGresult *res, int i, int col, int64_t *out)
{
    const char *v = pg_value(res, i, col);
    char *end;
    if (v == NULL)
        return 1;
    *out = strtoll(v, &end, 10);
    return *end == '\0' ? 0 : 1;
}

static int pg_read_timestamp(const PGresult *res, int i, int col, int64_t *out)
{
    const char *v = pg_value(res, i, col);
    if (v == NULL) {
        *out = NS_TS_NULL;
        return 0;
    }
    return model_ts_parse(v, out) == 0 ? 0 : 1;
}

static int pg_read_text(const PGresult *res, int i, int col, const char **out)
{
    *out = pg_value(res, i, col);
    return 0;
}

static int pg_read_bool(const PGresult *res, int i, int col, bool *out)
{
    const char *v = pg_value(res, i, col);
    *out = v != NULL && v[0] == 't';
    return 0;
}

/* A json column: PostgreSQL checked it on the way in. */
static int pg_read_json(const PGresult *res, int i, int col, const char **out)
{
    *out = pg_value(res, i, col);
    return 0;
}

int pg_row_draft(const PGresult *res, int i, ns_row *d)
{
    int col = 0;
    memset(d, 0, sizeof *d);
#define PG_READ_(name, member, json, column, kind)                          \
    if (pg_read_##kind(res, i, col++, &d->member) != 0)                     \
        return 1;
    NS_NODE_FIELDS(PG_READ_)
#undef PG_READ_
    return d->updated_at == NS_TS_NULL ? 1 : 0;
}
