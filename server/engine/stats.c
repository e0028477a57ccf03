#include "stats.h"

#include <string.h>

#include "model.h"

static const double commit_bounds[] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
};
static const double batch_bounds[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000,
};
static const double latency_bounds[] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

static const char *const reject_names[NS_REJECT_COUNT] = {
    "invalid", "stale", "illegal", "queue_full",
};

#define STATS_BOUNDS_FIT_(field, prom, bounds, help) \
    _Static_assert(sizeof bounds / sizeof *bounds <= NS_HIST_MAX_BUCKETS, #bounds);
NS_STATS_HISTS(STATS_BOUNDS_FIT_)
#undef STATS_BOUNDS_FIT_

static void hist_setup(ns_hist *h, const double *bounds, size_t n)
{
    h->bounds = bounds;
    h->n_bounds = n;
}

void stats_init(ns_stats *s, uint64_t queue_capacity)
{
    memset(s, 0, sizeof *s);
    s->queue_capacity = queue_capacity;
    s->start_ms = model_now_ms();
#define STATS_HIST_SETUP_(field, prom, bounds, help) \
    hist_setup(&s->field, bounds, sizeof bounds / sizeof *bounds);
    NS_STATS_HISTS(STATS_HIST_SETUP_)
#undef STATS_HIST_SETUP_
}

/* The bucket of value: the first whose upper bound is >= value, else +Inf. */
static size_t bucket(const ns_hist *h, double value)
{
    size_t i = 0;
    while (i < h->n_bounds && value > h->bounds[i])
        i++;
    return i;
}

static uint64_t micro(double value)
{
    return value > 0 ? (uint64_t)(value * 1e6 + 0.5) : 0;
}

void stats_observe(ns_hist *h, double value)
{
    atomic_fetch_add_explicit(&h->counts[bucket(h, value)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_micro, micro(value), memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void stats_batch_observe(const ns_hist *h, ns_hist_batch *b, double value)
{
    b->counts[bucket(h, value)]++;
    if (value > 0)
        b->sum += value;
    b->count++;
}

void stats_batch_add(ns_hist *h, const ns_hist_batch *b)
{
    for (size_t i = 0; i <= h->n_bounds; i++)
        if (b->counts[i])
            atomic_fetch_add_explicit(&h->counts[i], b->counts[i], memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_micro, micro(b->sum), memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, b->count, memory_order_relaxed);
}

void stats_count_http(ns_stats *s, int status)
{
    if (status >= NS_HTTP_MIN && status < NS_HTTP_MIN + NS_HTTP_CODES)
        atomic_fetch_add_explicit(&s->http_responses[status - NS_HTTP_MIN], 1,
                                  memory_order_relaxed);
}

const char *stats_reject_name(ns_reject r)
{
    if ((unsigned)r >= NS_REJECT_COUNT)
        return NULL;
    return reject_names[r];
}
