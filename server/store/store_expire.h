/*
 * store_expire: the half of store_expired_runs that does not depend on the
 * backend. A backend reads a page of rows in (run_id, node_id) order from
 * the cursor and feeds them here one by one; this judges each run as its
 * rows go by, rechecks (through the backend) a run whose rows began on an
 * earlier page, hands expired runs to the caller's fn and moves the cursor.
 * sqlite_expire.c and pg_expire.c are the two feeders, so both backends
 * keep one contract (store.h) with one copy of its logic.
 */
#ifndef NODESTATE_STORE_EXPIRE_H
#define NODESTATE_STORE_EXPIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "store.h"

/* One page's walk; store_expiry_begin fills it. */
typedef struct store_expiry_walk {
    store_expiry_cursor *c;
    char cutoff[NS_TS_BUF];      /* cutoff_ms in updated_at's own text form */
    /*
     * Whether run_id, judged on earlier pages, still has no node that keeps
     * it (store_expiry_keeps_sql): 1 yes, 0 no, -1 on an error (the backend
     * has set its message).
     */
    int (*recheck)(void *backend, const char *run_id, const char *cutoff);
    void *backend;
    int (*fn)(void *ctx, const char *run_id, int64_t max_seq);
    void *ctx;
    long examined;               /* rows fed and counted */
    int stop;                    /* 0 going on, 1 fn stopped, -1 recheck failed */
} store_expiry_walk;

void store_expiry_begin(store_expiry_walk *w, store_expiry_cursor *c, int64_t cutoff_ms,
                        int (*recheck)(void *backend, const char *run_id, const char *cutoff),
                        void *backend,
                        int (*fn)(void *ctx, const char *run_id, int64_t max_seq), void *ctx);
/*
 * Feeds the next row of the page (status and updated_at as stored; NULL
 * when NULL; seq as stored, 0 when NULL). Returns 0 to go on, or 1 once the walk has stopped (fn
 * stopped, or a recheck failed: w->stop says which); the row was then not
 * taken, and the rest of the page is not wanted.
 */
int store_expiry_row(store_expiry_walk *w, const char *run_id, const char *node_id,
                     const char *updated_at, const char *status, int64_t seq);
/*
 * The page is over: at_end when the backend ran out of rows before
 * max_rows (the end of the table, so its last run is whole). Returns how
 * many rows were examined, or -1 when a recheck failed.
 */
int store_expiry_end(store_expiry_walk *w, bool at_end);

/*
 * The condition, for a WHERE, that a row keeps its run: not terminal, or
 * updated at or after the cutoff (param names the parameter, e.g. "?2" or
 * "$2"), or with no updated_at. 0, or -1 when out is too small.
 */
int store_expiry_keeps_sql(const char *param, char *out, size_t outlen);

#endif
