/*
 * stats: the service's counters and histograms (README: Counters), as atomics
 * that any thread may bump or read without a lock. The engine owns one
 * ns_stats; the api layer reads it to render JSON and Prometheus text.
 */
#ifndef NODESTATE_STATS_H
#define NODESTATE_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Why an update was refused; indexes ns_stats.rejected. */
typedef enum ns_reject {
    NS_REJECT_INVALID,    /* bad input: 400, 413, 415, 422 */
    NS_REJECT_STALE,      /* lower attempt: 409 */
    NS_REJECT_ILLEGAL,    /* rank regression or terminal change: 409 */
    NS_REJECT_QUEUE_FULL, /* backpressure: 503 */
    NS_REJECT_COUNT
} ns_reject;

/* HTTP status codes counted: 100..599, at index code - NS_HTTP_MIN. */
#define NS_HTTP_MIN 100
#define NS_HTTP_CODES 500

/* Largest number of finite buckets any histogram has. */
#define NS_HIST_MAX_BUCKETS 16

/*
 * A Prometheus-style histogram. counts[i] counts observations that fell in
 * bucket i alone (not cumulative); counts[n_bounds] is the +Inf bucket. sum is
 * kept in millionths of the unit so it can be an integer atomic.
 */
typedef struct ns_hist {
    const double *bounds;        /* upper bounds, ascending */
    size_t n_bounds;
    _Atomic uint64_t counts[NS_HIST_MAX_BUCKETS + 1];
    _Atomic uint64_t sum_micro;
    _Atomic uint64_t count;
} ns_hist;

typedef struct ns_stats {
    _Atomic uint64_t updates_queued;     /* accepted into the queue (updates and deletes) */
    _Atomic uint64_t updates_processed;  /* queued entries committed (coalesced ones included) */
    _Atomic uint64_t batches_written;    /* committed transactions */
    _Atomic uint64_t errors;             /* failed transactions (each retry counts) */
    _Atomic uint64_t updates_coalesced;  /* queued entries absorbed by a newer one in the same batch */
    _Atomic uint64_t rows_written;       /* row upserts committed */
    _Atomic uint64_t runs_deleted;       /* accepted run deletes committed (each counts) */
    _Atomic uint64_t updates_duplicate;  /* no-change updates answered 200 */
    _Atomic uint64_t rejected[NS_REJECT_COUNT];
    _Atomic uint64_t cache_nodes;        /* nodes held in the cache */
    _Atomic uint64_t cache_runs;         /* runs held in the cache */
    _Atomic uint64_t cache_bytes;        /* bytes the cached nodes take */
    _Atomic uint64_t cache_loads;        /* read-throughs from SQLite that found rows: a run, a node, a page */
    _Atomic uint64_t cache_evictions;    /* runs dropped from the cache to bound it */
    _Atomic uint64_t rows_isolated;      /* rows SQLite refused for good, left out of their batch */
    _Atomic int64_t last_seq;            /* highest seq assigned */
    _Atomic int64_t durable_seq;         /* every seq <= this is committed */
    _Atomic uint64_t queue_depth;        /* entries waiting in the queue */
    _Atomic uint64_t queue_bytes;        /* bytes of the rows accepted and not yet written */
    uint64_t queue_capacity;             /* fixed at start */
    int64_t start_ms;                    /* wall clock at start */
    ns_hist commit_seconds;              /* duration of one committed transaction */
    ns_hist batch_updates;               /* queued entries per committed batch */
    ns_hist enqueue_to_commit_seconds;   /* acceptance to commit, per entry */
    _Atomic uint64_t http_responses[NS_HTTP_CODES]; /* answers sent, by status code */
} ns_stats;

/* Zeroes s and sets up the histogram buckets. */
void stats_init(ns_stats *s, uint64_t queue_capacity);
void stats_observe(ns_hist *h, double value);

/*
 * Observations gathered privately (one thread, no atomics) and added to a
 * histogram at once, with one atomic add per bucket instead of three per
 * observation: the writer times every update of a batch this way.
 */
typedef struct ns_hist_batch {
    uint64_t counts[NS_HIST_MAX_BUCKETS + 1];
    double sum;
    uint64_t count;
} ns_hist_batch;
void stats_batch_observe(const ns_hist *h, ns_hist_batch *b, double value);
void stats_batch_add(ns_hist *h, const ns_hist_batch *b);
/* Counts one HTTP answer with this status code (ignored outside 100..599). */
void stats_count_http(ns_stats *s, int status);
/* Name of a reject reason as it appears in /stats ("stale"). */
const char *stats_reject_name(ns_reject r);

#endif
