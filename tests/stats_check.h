/*
 * stats_check: the server's counters as the integration tests read them:
 * JSON /stats fetched and polled with bounded waits until a counter or a
 * condition holds, and single samples of the Prometheus text of /metrics.
 * The functions report and never assert.
 */
#ifndef NODESTATE_STATS_CHECK_H
#define NODESTATE_STATS_CHECK_H

#include <jansson.h>
#include <stdbool.h>

#include "server.h"

/* GET /stats?format=json on s's client, parsed (json_decref it), or NULL. */
json_t *ns_stats(ns_server *s);
/* One integer counter of JSON /stats, or -1 when it cannot be read. */
long long ns_stat(ns_server *s, const char *key);
/*
 * Polls JSON /stats (every ~20 ms, at most timeout_s seconds and a bounded
 * number of rounds) until pred(stats, ctx) is true. 0 when it became true,
 * -1 when it did not in time.
 */
int ns_wait_stats(ns_server *s, bool (*pred)(const json_t *stats, void *ctx),
                  void *ctx, double timeout_s);
/* Waits until counter key == value. */
int ns_wait_stat_eq(ns_server *s, const char *key, long long value,
                    double timeout_s);
/* Waits until counter key >= value. */
int ns_wait_stat_ge(ns_server *s, const char *key, long long value,
                    double timeout_s);
/* Waits until updates_queued == updates_processed and queue_depth == 0. */
int ns_wait_idle(ns_server *s, double timeout_s);
/*
 * The value of one Prometheus sample in text: series is the metric name with
 * its labels exactly as printed (`nodestate_batch_updates_bucket{le="10"}`).
 * 0, or -1 when there is no such line.
 */
int ns_prom_value(const char *text, const char *series, double *out);

#endif
