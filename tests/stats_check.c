/*
 * stats_check: JSON /stats fetched and polled with bounded waits, and
 * samples read out of the Prometheus text of /metrics.
 */
#include "stats_check.h"

#include <stdlib.h>
#include <string.h>

#include "bounded_wait.h"
#include "http_client.h"
#include "json_check.h"

json_t *ns_stats(ns_server *s)
{
    ns_resp r = { 0 };
    json_t *doc = NULL;
    if (ns_req(s, "GET", "/stats?format=json", NULL, NULL, &r) == 0 &&
        r.status == 200)
        doc = ns_resp_json(&r);
    ns_resp_free(&r);
    if (doc != NULL && !json_is_object(doc)) {
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

long long ns_stat(ns_server *s, const char *key)
{
    json_t *doc = ns_stats(s);
    long long v = -1;
    if (doc == NULL || ns_jint(doc, key, &v) != 0)
        v = -1;
    json_decref(doc);
    return v;
}

/* ns_wait_stats' condition: pred on a fresh /stats. */
typedef struct ns_stats_cond {
    ns_server *s;
    bool (*pred)(const json_t *stats, void *ctx);
    void *ctx;
} ns_stats_cond;

static bool ns_stats_hold(void *ctx)
{
    ns_stats_cond *c = ctx;
    json_t *doc = ns_stats(c->s);
    bool ok = doc != NULL && c->pred(doc, c->ctx);
    json_decref(doc);
    return ok;
}

int ns_wait_stats(ns_server *s, bool (*pred)(const json_t *stats, void *ctx),
                  void *ctx, double timeout_s)
{
    ns_stats_cond c = { s, pred, ctx };
    return ns_wait_until(ns_stats_hold, &c, timeout_s, 20);
}

typedef struct ns_stat_cond {
    const char *key;
    long long value;
    bool at_least;
} ns_stat_cond;

static bool ns_stat_pred(const json_t *stats, void *ctx)
{
    const ns_stat_cond *c = ctx;
    long long v;
    if (ns_jint(stats, c->key, &v) != 0)
        return false;
    return c->at_least ? v >= c->value : v == c->value;
}

int ns_wait_stat_eq(ns_server *s, const char *key, long long value,
                    double timeout_s)
{
    ns_stat_cond c = { key, value, false };
    return ns_wait_stats(s, ns_stat_pred, &c, timeout_s);
}

int ns_wait_stat_ge(ns_server *s, const char *key, long long value,
                    double timeout_s)
{
    ns_stat_cond c = { key, value, true };
    return ns_wait_stats(s, ns_stat_pred, &c, timeout_s);
}

static bool ns_idle_pred(const json_t *stats, void *ctx)
{
    (void)ctx;
    long long queued, processed, depth;
    if (ns_jint(stats, "updates_queued", &queued) != 0 ||
        ns_jint(stats, "updates_processed", &processed) != 0 ||
        ns_jint(stats, "queue_depth", &depth) != 0)
        return false;
    return queued == processed && depth == 0;
}

int ns_wait_idle(ns_server *s, double timeout_s)
{
    return ns_wait_stats(s, ns_idle_pred, NULL, timeout_s);
}

int ns_prom_value(const char *text, const char *series, double *out)
{
    size_t n = strlen(series);
    for (const char *line = text; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            char *end;
            double v = strtod(line + n + 1, &end);
            if (end == line + n + 1)
                return -1;
            *out = v;
            return 0;
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return -1;
}
