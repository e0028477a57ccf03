#include "prom.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The shortest %g text that reads back as exactly v, so bucket bounds print
 * as 0.005, 1, 2.5 rather than 0.0050000000000000001; and without an
 * exponent where more digits avoid one (100000, not 1e+05), as Go's
 * Prometheus client prints them.
 */
static void prom_double(buf *b, double v)
{
    if (isnan(v)) {
        buf_puts(b, "NaN");
        return;
    }
    if (isinf(v)) {
        buf_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    char text[40];
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(text, sizeof text, "%.*g", prec, v);
        if (strtod(text, NULL) == v)
            break;
    }
    snprintf(text, sizeof text, "%.*g", prec, v);
    for (int more = prec + 1; strchr(text, 'e') != NULL && more <= 17; more++) {
        char plain[40];
        snprintf(plain, sizeof plain, "%.*g", more, v);
        if (strchr(plain, 'e') == NULL && strtod(plain, NULL) == v) {
            memcpy(text, plain, sizeof text);
            break;
        }
    }
    buf_puts(b, text);
}

/* units / 10^digits as an exact decimal with trailing zeros trimmed ("1.5", "3"). */
static void prom_fixed(buf *b, uint64_t units, unsigned digits, uint64_t scale)
{
    char frac[24];
    snprintf(frac, sizeof frac, "%0*" PRIu64, (int)digits, units % scale);
    size_t n = strlen(frac);
    while (n > 0 && frac[n - 1] == '0')
        n--;
    buf_printf(b, "%" PRIu64, units / scale);
    if (n > 0) {
        buf_append(b, ".", 1);
        buf_append(b, frac, n);
    }
}

static void prom_head(buf *b, const char *name, const char *type,
                      const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_counter(buf *b, const char *name, const char *help,
                         uint64_t v)
{
    prom_head(b, name, "counter", help);
    buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void prom_gauge(buf *b, const char *name, const char *help, int64_t v)
{
    prom_head(b, name, "gauge", help);
    buf_printf(b, "%s %" PRId64 "\n", name, v);
}

/*
 * One histogram family. ns_hist keeps per-bucket counts; Prometheus wants
 * them cumulative. _count is the cumulative total rather than h->count so the
 * +Inf bucket and _count agree even while writers bump the counters.
 */
static void prom_hist(buf *b, const char *name, const char *help,
                      const ns_hist *h)
{
    prom_head(b, name, "histogram", help);
    size_t n = h->n_bounds;
    if (n > NS_HIST_MAX_BUCKETS)
        n = NS_HIST_MAX_BUCKETS;
    uint64_t cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += atomic_load(&h->counts[i]);
        buf_printf(b, "%s_bucket{le=\"", name);
        prom_double(b, h->bounds[i]);
        buf_printf(b, "\"} %" PRIu64 "\n", cum);
    }
    cum += atomic_load(&h->counts[n]);
    buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum ", name, cum,
               name);
    prom_fixed(b, atomic_load(&h->sum_micro), 6, 1000000u);
    buf_printf(b, "\n%s_count %" PRIu64 "\n", name, cum);
}

void prom_render(buf *b, const ns_stats *s, int64_t now_ms)
{
    prom_counter(b, "nodestate_updates_queued_total",
                 "Updates and deletes accepted into the write queue.",
                 atomic_load(&s->updates_queued));
    prom_counter(b, "nodestate_updates_processed_total",
                 "Queued entries committed to SQLite, coalesced ones included.",
                 atomic_load(&s->updates_processed));
    prom_counter(b, "nodestate_batches_written_total",
                 "Transactions committed by the writer.",
                 atomic_load(&s->batches_written));
    prom_counter(b, "nodestate_errors_total",
                 "Transactions that failed to commit (each retry counts).",
                 atomic_load(&s->errors));
    prom_counter(b, "nodestate_updates_coalesced_total",
                 "Queued entries absorbed by a newer one in the same batch.",
                 atomic_load(&s->updates_coalesced));
    prom_counter(b, "nodestate_rows_written_total",
                 "Node rows upserted in committed transactions.",
                 atomic_load(&s->rows_written));
    prom_counter(b, "nodestate_runs_deleted_total",
                 "Run deletions committed.",
                 atomic_load(&s->runs_deleted));
    prom_counter(b, "nodestate_updates_duplicate_total",
                 "Updates that changed nothing and were answered 200.",
                 atomic_load(&s->updates_duplicate));

    prom_head(b, "nodestate_updates_rejected_total", "counter",
              "Updates refused, by reason.");
    for (int r = 0; r < NS_REJECT_COUNT; r++) {
        const char *reason = stats_reject_name((ns_reject)r);
        buf_printf(b, "nodestate_updates_rejected_total{reason=\"%s\"} %" PRIu64
                   "\n", reason != NULL ? reason : "unknown",
                   atomic_load(&s->rejected[r]));
    }

    prom_gauge(b, "nodestate_queue_depth", "Entries waiting in the write queue.",
               (int64_t)atomic_load(&s->queue_depth));
    prom_gauge(b, "nodestate_queue_capacity",
               "Most entries the write queue holds.",
               (int64_t)s->queue_capacity);
    prom_gauge(b, "nodestate_cache_nodes", "Nodes held in the cache.",
               (int64_t)atomic_load(&s->cache_nodes));
    prom_gauge(b, "nodestate_cache_runs", "Runs held in the cache.",
               (int64_t)atomic_load(&s->cache_runs));
    prom_counter(b, "nodestate_cache_loads_total",
                 "Runs read through from SQLite into the cache.",
                 atomic_load(&s->cache_loads));
    prom_gauge(b, "nodestate_last_seq", "Highest sequence number assigned.",
               atomic_load(&s->last_seq));
    prom_gauge(b, "nodestate_durable_seq",
               "Every sequence number up to this one is committed.",
               atomic_load(&s->durable_seq));

    prom_head(b, "nodestate_uptime_seconds", "gauge",
              "Seconds since the service started.");
    /* The wall clock can step back; uptime never goes negative. */
    int64_t up_ms = now_ms > s->start_ms ? now_ms - s->start_ms : 0;
    buf_puts(b, "nodestate_uptime_seconds ");
    prom_fixed(b, (uint64_t)up_ms, 3, 1000u);
    buf_append(b, "\n", 1);

    prom_hist(b, "nodestate_commit_duration_seconds",
              "Duration of one committed transaction.", &s->commit_seconds);
    prom_hist(b, "nodestate_batch_updates",
              "Queued entries (updates per batch) in one committed transaction.",
              &s->batch_updates);
    prom_hist(b, "nodestate_enqueue_to_commit_seconds",
              "Time from acceptance into the queue to commit, per entry.",
              &s->enqueue_to_commit_seconds);
}
