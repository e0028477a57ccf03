/*
 * pg_internal: what the files of the PostgreSQL store share, and nothing
 * outside server/store may include (it brings libpq-fe.h). The store is split
 * by concern: pg_migrate.c (schema, version, the SQL generated from
 * NS_NODE_FIELDS), pg_write.c (the write connection: the batch, meta,
 * replay of the local sidecar), pg_read.c (the read-through connection and
 * seq blocks), pg_expire.c (retention's candidates), pg_common.c (connections, errors, array literals, decoding
 * rows), pg_ops.c (the store_ops table).
 *
 * The table is the same as SQLite's: run_node_state with the columns of
 * NS_NODE_FIELDS (timestamps and JSON as the same text, run_id and node_id
 * in the "C" collation so node_id order is strcmp order), and
 * nodestate_meta(key, value) holding 'schema_version' and 'seq_reserved'
 * (the highest seq any instance has reserved; see store_reader_seq_block).
 * There is no 'last_seq' row: every seq handed out lies in a block recorded
 * before use, and a row every batch updated would make all instances' commits
 * wait for each other.
 */
#ifndef NODESTATE_PG_INTERNAL_H
#define NODESTATE_PG_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "model.h"
#include "store.h"
#include "store_ops.h"

/* The schema this build writes and the newest one it can use. */
#define PG_SCHEMA_VERSION 1
/*
 * How long the writer waits for a row lock held by someone else before the
 * batch fails (and is retried with the writer's backoff), as SQLite's busy
 * timeout: a stuck lock shows as failing commits, not as a stalled writer.
 */
#define PG_LOCK_TIMEOUT "1s"
/* Room for "<operation>: <libpq message>". */
#define PG_ERRMSG_MAX 512
/*
 * One advisory lock key serialises schema creation and migration among
 * instances starting together ("nodestat" in ASCII).
 */
#define PG_SCHEMA_LOCK_KEY "7957688554755990644"

/* The SQL texts built from NS_NODE_FIELDS once, at open (pg_migrate.c). */
typedef struct pg_sql {
    char *schema;        /* CREATE ... IF NOT EXISTS, meta rows */
    char *upsert;        /* unnest($1..$N) upsert judged by the rules */
    char *upsert_forced; /* the same, judged by seq alone (force: true) */
    char *select_cols;   /* "run_id, node_id, ..." for a SELECT */
    int ncols;           /* columns of NS_NODE_FIELDS */
} pg_sql;

/* The write connection. Owned by one thread (the writer); no locking. */
typedef struct pg_store {
    PGconn *conn;
    char *uri;
    pg_sql sql;
    int64_t last_seq;            /* 'seq_reserved' at open, then the highest seq committed */
    char errmsg[PG_ERRMSG_MAX];  /* why the last call failed */
} pg_store;

/* The read-through connection; any thread may use it. */
typedef struct pg_reader {
    pthread_mutex_t lock;        /* guards conn */
    PGconn *conn;
    char *select_cols;
} pg_reader;

/* A growable text buffer; oom turns true (and stays) when malloc fails. */
typedef struct pg_buf {
    char *p;
    size_t n, cap;
    bool oom;
    size_t elems;                /* elements of the array literal being built */
} pg_buf;

/* Appends len bytes of s. */
void pg_buf_put(pg_buf *b, const char *s, size_t len);
/* Appends a C string. */
void pg_buf_str(pg_buf *b, const char *s);
/* Starts an array literal "{". */
void pg_buf_array_open(pg_buf *b);
/* Adds one element, quoted and escaped; NULL is SQL NULL. */
void pg_buf_array_elem(pg_buf *b, const char *v);
/* Ends the array literal "}"; the text is NUL-terminated. */
void pg_buf_array_close(pg_buf *b);
void pg_buf_free(pg_buf *b);

/* Connects to uri; NULL with err set ("<uri without password>: why"). */
PGconn *pg_connect(const char *uri, char *err, size_t errlen);
/* "<what>: <the server's message>" into out, from res or the connection. */
void pg_set_err(char *out, size_t outlen, PGconn *conn, const PGresult *res,
                const char *what);
/* Runs a statement without parameters; 0 once it succeeded, else -1 (errmsg). */
int pg_exec(PGconn *conn, const char *sql, char *err, size_t errlen,
            const char *what);
/* A one-value bigint query ($1.. as text params); 0, 1 no row, -1 error. */
int pg_query_int(PGconn *conn, const char *sql, int nparams,
                 const char *const *params, int64_t *out, char *err,
                 size_t errlen, const char *what);
/*
 * Whether a failed statement failed for something about a row it carried
 * (data exception, integrity, a limit), so that retrying the same row can
 * never succeed; anything else is about the database or the connection.
 */
bool pg_row_level(const PGresult *res);
/*
 * Fills a draft from row i of res (columns in NS_NODE_FIELDS order); its
 * strings borrow from res. 0, or 1 for a row this build cannot read.
 */
int pg_row_draft(const PGresult *res, int i, ns_row *d);

/* Builds s->sql. 0, -1 out of memory. */
int pg_sql_build(pg_sql *sql);
void pg_sql_free(pg_sql *sql);
/*
 * Creates the schema (or checks it) in one transaction under the schema
 * advisory lock; refuses a database of a newer version. 0, or -1 with err.
 */
int pg_migrate(PGconn *conn, const pg_sql *sql, char *err, size_t errlen);

/* The backend's side of store.h (pg_ops.c points at these). */
pg_store *pg_store_open(const char *uri, bool sync_full, char *err,
                        size_t errlen);
void pg_store_close(pg_store *s);
int64_t pg_store_last_seq(const pg_store *s);
const char *pg_store_errmsg(const pg_store *s);
int pg_store_write(pg_store *s, store_batch *b);
int pg_store_meta_get(pg_store *s, const char *key, int64_t *value);
int pg_store_meta_set(pg_store *s, const char *key, int64_t value);
int pg_store_replay(pg_store *s, const char *spill_path, const char *notify_id,
                    store_replayed *out, char *err, size_t errlen);
pg_reader *pg_reader_open(const char *uri, char *err, size_t errlen);
void pg_reader_close(pg_reader *r);
int pg_reader_load_run(pg_reader *r, const char *run_id, bool light,
                       int (*fn)(void *ctx, ns_row *row), void *ctx,
                       size_t *skipped);
int pg_reader_load_node(pg_reader *r, const char *run_id, const char *node_id,
                        ns_row **out, bool *run_has_rows);
int pg_reader_deleted_seq(pg_reader *r, const char *run_id, int64_t *seq);
int pg_reader_load_page(pg_reader *r, const char *run_id, const char *after,
                        unsigned status_mask, size_t want,
                        int (*fn)(void *ctx, ns_row *row), void *ctx,
                        store_page *page);
/*
 * store_expired_runs (pg_expire.c), on the write connection.
 */
int pg_store_expired_runs(pg_store *s, int64_t cutoff_ms, size_t max_rows,
                          store_expiry_cursor *c,
                          int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx);
/* Makes a broken write connection anew (with its session settings) before a statement. */
void pg_store_revive(pg_store *s);
int pg_reader_seq_block(pg_reader *r, int64_t above, int64_t want,
                        int64_t *first, int64_t *last);

#endif
