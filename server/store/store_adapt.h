/*
 * store_adapt: the adapters every backend's store_ops needs, written once.
 * store.c holds a backend's connections as void pointers; a backend's own
 * functions take its own types (sqlite_store *, pg_reader *, ...). These
 * one-line adapters convert between the two, and STORE_ADAPTERS(P) defines
 * them, as static functions named adapt_*, for the backend whose functions
 * are named P##_store_open, P##_reader_load_run and so on. A backend's
 * *_ops.c includes its private header, then this one, expands the macro
 * once and fills its store_ops with the adapt_* functions. No third-party
 * type is named here.
 */
#ifndef NODESTATE_STORE_ADAPT_H
#define NODESTATE_STORE_ADAPT_H

#include "store_ops.h"

#define STORE_ADAPTERS(P)                                                          \
    static void *adapt_open(const char *path, bool sync_full, char *err,           \
                            size_t errlen)                                         \
    {                                                                              \
        return P##_store_open(path, sync_full, err, errlen);                       \
    }                                                                              \
    static void adapt_close(void *s) { P##_store_close(s); }                       \
    static int64_t adapt_last_seq(const void *s) { return P##_store_last_seq(s); } \
    static int adapt_write(void *s, store_batch *b) { return P##_store_write(s, b); } \
    static int adapt_replay(void *s, const char *spill_path, const char *notify_id, \
                            store_replayed *out, char *err, size_t errlen)         \
    {                                                                              \
        return P##_store_replay(s, spill_path, notify_id, out, err, errlen);       \
    }                                                                              \
    static const char *adapt_errmsg(const void *s) { return P##_store_errmsg(s); } \
    static int adapt_meta_get(void *s, const char *key, int64_t *value)            \
    {                                                                              \
        return P##_store_meta_get(s, key, value);                                  \
    }                                                                              \
    static int adapt_meta_set(void *s, const char *key, int64_t value)             \
    {                                                                              \
        return P##_store_meta_set(s, key, value);                                  \
    }                                                                              \
    static void *adapt_reader_open(const char *path, char *err, size_t errlen)     \
    {                                                                              \
        return P##_reader_open(path, err, errlen);                                 \
    }                                                                              \
    static void adapt_reader_close(void *r) { P##_reader_close(r); }               \
    static int adapt_load_run(void *r, const char *run_id, bool light,             \
                              int (*fn)(void *ctx, ns_row *row), void *ctx,        \
                              size_t *skipped)                                     \
    {                                                                              \
        return P##_reader_load_run(r, run_id, light, fn, ctx, skipped);            \
    }                                                                              \
    static int adapt_load_node(void *r, const char *run_id, const char *node_id,   \
                               ns_row **out, bool *run_has_rows)                   \
    {                                                                              \
        return P##_reader_load_node(r, run_id, node_id, out, run_has_rows);        \
    }                                                                              \
    static int adapt_load_page(void *r, const char *run_id, const char *after,     \
                               unsigned status_mask, size_t want,                  \
                               int (*fn)(void *ctx, ns_row *row), void *ctx,       \
                               store_page *page)                                   \
    {                                                                              \
        return P##_reader_load_page(r, run_id, after, status_mask, want, fn, ctx,  \
                                    page);                                         \
    }                                                                              \
    static int adapt_deleted_seq(void *r, const char *run_id, int64_t *seq)        \
    {                                                                              \
        return P##_reader_deleted_seq(r, run_id, seq);                             \
    }                                                                              \
    static int adapt_expired_runs(void *s, int64_t cutoff_ms, size_t max_rows,     \
                                  store_expiry_cursor *c,                          \
                                  int (*fn)(void *ctx, const char *run_id, int64_t), \
                                  void *ctx)                                       \
    {                                                                              \
        return P##_store_expired_runs(s, cutoff_ms, max_rows, c, fn, ctx);         \
    }

/* The store_ops members STORE_ADAPTERS fills, for a designated initialiser. */
#define STORE_ADAPTED_OPS                                                          \
    .open = adapt_open, .close = adapt_close, .last_seq = adapt_last_seq,          \
    .write = adapt_write, .replay = adapt_replay, .errmsg = adapt_errmsg,          \
    .meta_get = adapt_meta_get, .meta_set = adapt_meta_set,                        \
    .reader_open = adapt_reader_open, .reader_close = adapt_reader_close,          \
    .load_run = adapt_load_run, .load_node = adapt_load_node,                      \
    .load_page = adapt_load_page, .deleted_seq = adapt_deleted_seq,              \
    .expired_runs = adapt_expired_runs

#endif
