/*
 * model: the node-state record every layer shares, and the small pure helpers
 * around it (status names and ranks, id validation, RFC 3339 timestamps).
 *
 * A row (ns_row) is immutable once built and reference counted: the cache holds
 * one reference, every queued write holds another, a reader that is handed a
 * row holds its own. Building a row packs it and all its strings into one
 * allocation (model_row_copy), so a state change costs one malloc.
 *
 * A "draft" is an ns_row on the stack whose string pointers borrow from
 * elsewhere; model_row_copy turns a draft into a packed, counted row.
 */
#ifndef NODESTATE_MODEL_H
#define NODESTATE_MODEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest run_id / node_id in bytes (the API contract, openapi.yaml). */
#define NS_ID_MAX 128
/* A timestamp field that holds JSON null. */
#define NS_TS_NULL INT64_MIN
/* Room for "2026-11-26T16:27:29.123Z" plus NUL. */
#define NS_TS_BUF 32

typedef enum ns_status {
    NS_IDLE,
    NS_SCHEDULED,
    NS_RUNNING,
    NS_PAUSED,
    NS_SUSPENDED,
    NS_COMPLETED,
    NS_FAILED,
    NS_STATUS_COUNT
} ns_status;

/* The per-status timestamps, in the order of ns_row.ts. */
typedef enum ns_ts_field {
    NS_TS_SCHEDULED,
    NS_TS_STARTED,
    NS_TS_COMPLETED,
    NS_TS_FAILED,
    NS_TS_SUSPENDED,
    NS_TS_COUNT
} ns_ts_field;

typedef struct ns_row {
    _Atomic int refs;            /* 0 in a draft; 1+ in a packed row */
    const char *run_id;
    const char *node_id;
    ns_status status;
    int64_t attempt;             /* >= 1 */
    int64_t ts[NS_TS_COUNT];     /* ms since the epoch, or NS_TS_NULL */
    const char *last_error;      /* NULL is JSON null */
    bool retryable;
    const char *suspension_reason;
    const char *resume_state;    /* compact JSON text, NULL is JSON null */
    const char *outputs;         /* compact JSON text, NULL is JSON null */
    int64_t updated_at;          /* ms since the epoch, server clock */
    int64_t seq;                 /* global sequence of this change */
    char data[];                 /* packed strings (packed rows only) */
} ns_row;

/*
 * The fields of a node, one line each, in the order of the JSON row, of the
 * columns of run_node_state and of every statement that names them:
 *
 *   X(name, member, json, column, kind)
 *
 * name    an identifier for the field (the SQLite store's COL_<name>)
 * member  the ns_row member that holds it (row->member)
 * json    its key in the JSON row
 * column  its SQL column in run_node_state and in the sidecar's spill_log
 * kind    how it is stored, bound, read and encoded:
 *         id         text, never NULL (run_id, node_id)
 *         status     ns_status, stored as its name
 *         int        int64_t
 *         timestamp  ms since the epoch, stored as RFC 3339 text; NS_TS_NULL
 *                    is SQL NULL and JSON null (updated_at is never null)
 *         text       a string; NULL is SQL NULL and JSON null
 *         bool       stored as 0 or 1
 *         json       compact JSON text, spliced into answers as it is
 *
 * The SQLite store (server/store) binds and reads the columns, and codec_out.c
 * encodes a row, from this list. The store also expands the column parts of
 * its SQL from it (store_sql in sqlite_common.c: the tables' column
 * declarations, column lists, placeholders, the upsert's SET), with each
 * kind's SQL type in sqlite_internal.h; an existing file's schema must not
 * change, so a new field goes at the end. store_prepare_row still checks
 * each statement that binds or returns a row against the list, and
 * tests/test_store.c checks the tables a new file gets, column by column.
 * ns_row and ns_update stay written out: the timestamps are an array indexed
 * by ns_ts_field, and an update has presence flags a row does not.
 */
#define NS_NODE_FIELDS(X)                                                   \
    X(run_id, run_id, "run_id", "run_id", id)                               \
    X(node_id, node_id, "node_id", "node_id", id)                           \
    X(status, status, "status", "status", status)                           \
    X(attempt, attempt, "attempt", "attempt", int)                          \
    X(scheduled_at, ts[NS_TS_SCHEDULED], "scheduled_at", "scheduled_at",    \
      timestamp)                                                            \
    X(started_at, ts[NS_TS_STARTED], "started_at", "started_at", timestamp) \
    X(completed_at, ts[NS_TS_COMPLETED], "completed_at", "completed_at",    \
      timestamp)                                                            \
    X(failed_at, ts[NS_TS_FAILED], "failed_at", "failed_at", timestamp)     \
    X(suspended_at, ts[NS_TS_SUSPENDED], "suspended_at", "suspended_at",    \
      timestamp)                                                            \
    X(last_error, last_error, "last_error", "last_error", text)             \
    X(retryable, retryable, "retryable", "retryable", bool)                 \
    X(suspension_reason, suspension_reason, "suspension_reason",            \
      "suspension_reason", text)                                            \
    X(resume_state, resume_state, "resume_state", "resume_state_json", json) \
    X(outputs, outputs, "outputs", "outputs_json", json)                    \
    X(updated_at, updated_at, "updated_at", "updated_at", timestamp)        \
    X(seq, seq, "seq", "seq", int)

/* A writable field of an update: absent, null, or a value. */
typedef struct ns_text {
    bool set;                    /* present in the request */
    const char *value;           /* NULL when present as JSON null */
} ns_text;

/*
 * One update as a worker sent it. Strings are borrowed from the decoded
 * request and need only live until engine_submit returns.
 */
typedef struct ns_update {
    ns_status status;
    bool has_attempt;
    int64_t attempt;
    unsigned ts_set;             /* bit (1u << ns_ts_field) per field present */
    int64_t ts[NS_TS_COUNT];     /* NS_TS_NULL when present as null */
    ns_text last_error;
    bool has_retryable;
    bool retryable;
    ns_text suspension_reason;
    ns_text resume_state;        /* compact JSON text */
    ns_text outputs;             /* compact JSON text */
    bool force;
} ns_update;

/* "running" for NS_RUNNING; NULL for an out-of-range value. */
const char *model_status_name(ns_status s);
/* Parses a status name; 0 on success, -1 for an unknown name. */
int model_status_parse(const char *name, ns_status *out);
/* Rank of a status (docs/design.md §3): idle 0, scheduled 1, running/paused/suspended 2, completed/failed 3. */
int model_status_rank(ns_status s);
bool model_status_terminal(ns_status s);
/* The timestamp a status stamps when a node moves into it, or -1 (idle, paused). */
int model_status_ts_field(ns_status s);
/* "scheduled_at" for NS_TS_SCHEDULED. */
const char *model_ts_field_name(ns_ts_field f);

/* 1–NS_ID_MAX bytes of [A-Za-z0-9._~:-]. */
bool model_id_valid(const char *id, size_t len);

/* Now, in ms since the epoch (CLOCK_REALTIME). */
int64_t model_now_ms(void);
/* Now on CLOCK_MONOTONIC, in ns: for deadlines and durations. */
int64_t model_mono_ns(void);
/*
 * FNV-1a over the bytes of s, continuing from h (start with
 * MODEL_HASH_SEED): the hash of every in-memory table keyed by ids.
 */
#define MODEL_HASH_SEED 1469598103934665603ull
uint64_t model_hash(uint64_t h, const char *s);
/* Formats ms as "YYYY-MM-DDTHH:MM:SS.mmmZ" into buf (NS_TS_BUF bytes). */
void model_ts_format(int64_t ms, char buf[NS_TS_BUF]);
/*
 * Parses an RFC 3339 date-time (any fraction digits, 'Z' or a numeric
 * offset, 'T' or 't') into ms since the epoch, truncating below the ms.
 * Returns 0, or -1 for anything that is not RFC 3339 or whose UTC time
 * falls outside the years 0000-9999.
 */
int model_ts_parse(const char *s, int64_t *ms);

/*
 * Packs a draft (or any row) into one new allocation with refs == 1.
 * Returns NULL when out of memory.
 */
ns_row *model_row_copy(const ns_row *draft);
/*
 * The bytes of model_row_copy's one allocation for row: the struct and each
 * string with its NUL. What the queue and the cache count against their bounds.
 */
size_t model_row_bytes(const ns_row *row);
void model_row_ref(ns_row *row);
/* Drops one reference; frees the row at zero. NULL is a no-op. */
void model_row_unref(ns_row *row);
/* Whether two rows hold the same state, ignoring seq, updated_at and refs. */
bool model_row_same(const ns_row *a, const ns_row *b);

#endif
