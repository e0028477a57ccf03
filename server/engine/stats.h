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

/*
 * Every scalar counter and gauge, one line each, in the order of the JSON
 * /stats object. ns_stats (below), codec_stats (JSON) and prom_render_with
 * (Prometheus text) expand this list, and tests/test_stats.c checks the
 * README's Counters and Prometheus tables against what they render, so a
 * counter is added here once and the README must follow.
 *
 *   X(field, prom, type, store, json_at, prom_at, help)
 *
 * field    the ns_stats member and the key in the JSON object
 * prom     the Prometheus family name
 * type     counter or gauge: the Prometheus TYPE (and prom.c's prom_<type>)
 * store    how the value is kept and read (NS_STAT_TYPE_ and NS_STAT_READ_):
 *          au64 _Atomic uint64_t, ai64 _Atomic int64_t, u64 a plain uint64_t
 *          set once by stats_init and read-only afterwards
 * json_at  whether the JSON object has the line before or after its
 * prom_at  "updates_rejected" member, and the Prometheus text before or after
 *          its nodestate_updates_rejected_total family (NS_STAT_BEFORE_REJECTED
 *          or NS_STAT_AFTER_REJECTED): the two answers have always placed the
 *          queue gauges and updates_duplicate differently, and stay as they are
 * help     the Prometheus HELP text
 *
 * Not in the list, because one line per value does not fit them, and written
 * out by hand in codec_stats and prom_render_with:
 *   - updates_rejected (rejected[], a labelled family by ns_reject reason);
 *   - http_responses (http_responses[], labelled by code, zero codes left out);
 *   - uptime_seconds (computed from start_ms at the time of the answer);
 *   - the histograms, which have their own list, NS_STATS_HISTS;
 *   - Prometheus only: nodestate_build_info and the process_* gauges.
 */
#define NS_STATS_SCALARS(X) \
    X(updates_queued, "nodestate_updates_queued_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Updates and deletes accepted into the write queue.") \
    X(updates_processed, "nodestate_updates_processed_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Queued entries committed to SQLite, coalesced ones included.") \
    X(batches_written, "nodestate_batches_written_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Transactions committed by the writer.") \
    X(errors, "nodestate_errors_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Transactions that failed to commit (each retry counts).") \
    X(queue_depth, "nodestate_queue_depth", gauge, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Entries waiting in the write queue.") \
    X(queue_capacity, "nodestate_queue_capacity", gauge, u64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Most entries the write queue holds.") \
    X(queue_bytes, "nodestate_queue_bytes", gauge, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Bytes of the rows accepted and not yet written.") \
    X(updates_coalesced, "nodestate_updates_coalesced_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Queued entries absorbed by a newer one in the same batch.") \
    X(rows_written, "nodestate_rows_written_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Node rows upserted in committed transactions.") \
    X(runs_deleted, "nodestate_runs_deleted_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Accepted run deletes committed, each counted.") \
    X(runs_expired, "nodestate_runs_expired_total", counter, au64, \
      NS_STAT_BEFORE_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Runs deleted by --retention, committed.") \
    X(updates_duplicate, "nodestate_updates_duplicate_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_BEFORE_REJECTED, \
      "Updates that changed nothing and were answered 200.") \
    X(cache_nodes, "nodestate_cache_nodes", gauge, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Nodes held in the cache.") \
    X(cache_runs, "nodestate_cache_runs", gauge, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Runs held in the cache.") \
    X(cache_bytes, "nodestate_cache_bytes", gauge, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Bytes the nodes held in the cache take.") \
    X(cache_loads, "nodestate_cache_loads_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Read-throughs from SQLite that found rows (a run, a node, or a page).") \
    X(cache_evictions, "nodestate_cache_evictions_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Runs dropped from the cache to bound its size.") \
    X(cache_nodes_evicted, "nodestate_cache_nodes_evicted_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Nodes dropped from the cache to bound its size.") \
    X(cache_run_loads, "nodestate_cache_run_loads_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Runs read whole from SQLite (a summary or a delete of a run not cached whole).") \
    X(cache_invalidations, "nodestate_cache_invalidations_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Cached runs dropped because another instance committed to them.") \
    X(rows_isolated, "nodestate_rows_isolated_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Rows SQLite refused for good, left out of their batch.") \
    X(store_conflicts, "nodestate_store_conflicts_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Rows a shared store refused: their node had a newer stored state.") \
    X(checkpoint_failures, "nodestate_checkpoint_failures_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "SQLite WAL checkpoint rounds that failed.") \
    X(wal_frames, "nodestate_wal_frames", gauge, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Frames in the SQLite WAL after the last commit.") \
    X(last_seq, "nodestate_last_seq", gauge, ai64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Highest sequence number assigned.") \
    X(durable_seq, "nodestate_durable_seq", gauge, ai64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Every sequence number up to this one is committed.") \
    X(batch_requests, "nodestate_batch_requests_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Requests of many updates (POST /runs/{run_id}/nodes) with a valid envelope.") \
    X(batch_request_updates, "nodestate_batch_request_updates_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Updates (items) in those requests, whatever became of each.") \
    X(watchers, "nodestate_watchers", gauge, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Event streams and long polls open now.") \
    X(watch_events_sent, "nodestate_watch_events_sent_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Node events written to event streams.") \
    X(watch_dropped, "nodestate_watch_dropped_total", counter, au64, \
      NS_STAT_AFTER_REJECTED, NS_STAT_AFTER_REJECTED, \
      "Event streams dropped for falling too far behind.")

/*
 * The histograms, in the order both answers give them:
 *   X(field, prom, bounds, help)
 * field is the ns_stats member and the JSON key (with count and sum); bounds
 * names the array of bucket upper bounds in stats.c.
 */
#define NS_STATS_HISTS(X) \
    X(commit_seconds, "nodestate_commit_duration_seconds", commit_bounds, \
      "Duration of one committed transaction.") \
    X(batch_updates, "nodestate_batch_updates", batch_bounds, \
      "Queued entries (updates per batch) in one committed transaction.") \
    X(enqueue_to_commit_seconds, "nodestate_enqueue_to_commit_seconds", \
      latency_bounds, "Time from acceptance into the queue to commit, per entry.")

/* Where a scalar goes relative to the updates_rejected family (json_at, prom_at). */
typedef enum ns_stat_at {
    NS_STAT_BEFORE_REJECTED,
    NS_STAT_AFTER_REJECTED,
} ns_stat_at;

/* The store column: a scalar's C type, and reading it (an unqualified rvalue). */
#define NS_STAT_TYPE_au64 _Atomic uint64_t
#define NS_STAT_TYPE_ai64 _Atomic int64_t
#define NS_STAT_TYPE_u64 uint64_t
#define NS_STAT_READ_au64(p) atomic_load(p)
#define NS_STAT_READ_ai64(p) atomic_load(p)
#define NS_STAT_READ_u64(p) ((uint64_t)*(p))

#define NS_STAT_FIELD_(field, prom, type, store, json_at, prom_at, help) \
    NS_STAT_TYPE_##store field;
#define NS_STAT_HIST_FIELD_(field, prom, bounds, help) ns_hist field;

typedef struct ns_stats {
    NS_STATS_SCALARS(NS_STAT_FIELD_)
    NS_STATS_HISTS(NS_STAT_HIST_FIELD_)
    _Atomic uint64_t rejected[NS_REJECT_COUNT];      /* refused updates, by reason */
    _Atomic uint64_t http_responses[NS_HTTP_CODES];  /* answers sent, by status code */
    int64_t start_ms;                                /* wall clock at start */
} ns_stats;

#undef NS_STAT_FIELD_
#undef NS_STAT_HIST_FIELD_

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
