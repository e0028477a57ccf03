#include "prom.h"

#include <ctype.h>
#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Set by the build; the fallback keeps a stray compile of this file working. */
#ifndef NODESTATE_VERSION
#define NODESTATE_VERSION "0.0.0"
#endif

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

/* Resident set size in bytes from <dir>/statm (its second field, in pages). */
static int64_t prom_read_rss(const char *dir)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/statm", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return -1;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    uint64_t size_pages, resident_pages;
    int got = fscanf(f, "%" SCNu64 " %" SCNu64, &size_pages, &resident_pages);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (got != 2 || page <= 0 || resident_pages > (uint64_t)INT64_MAX / (uint64_t)page)
        return -1;
    return (int64_t)(resident_pages * (uint64_t)page);
}

static bool prom_all_digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

/*
 * Descriptors listed in <dir>/fd. Listing the directory takes a descriptor of
 * its own, which the process did not have before the scrape: it is skipped.
 */
static int64_t prom_count_fds(const char *dir)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/fd", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return -1;
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    char self[24];
    int dfd = dirfd(d);
    snprintf(self, sizeof self, "%d", dfd);
    int64_t count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!prom_all_digits(e->d_name))
            continue;   /* "." and ".." */
        if (dfd >= 0 && strcmp(e->d_name, self) == 0)
            continue;
        count++;
    }
    closedir(d);
    return count;
}

void prom_process_read(const char *dir, prom_process *out)
{
    out->resident_bytes = prom_read_rss(dir);
    out->open_fds = prom_count_fds(dir);
}

void prom_render(buf *b, const ns_stats *s, int64_t now_ms)
{
    prom_process proc;
    prom_process_read("/proc/self", &proc);
    prom_render_with(b, s, now_ms, &proc);
}

/* The families of NS_STATS_SCALARS that go on this side of updates_rejected. */
static void prom_scalars(buf *b, const ns_stats *s, ns_stat_at at)
{
#define PROM_SCALAR_(field, prom, type, store, json_at, prom_at, help) \
    if ((prom_at) == at)                                             \
        prom_##type(b, prom, help, NS_STAT_READ_##store(&s->field));
    NS_STATS_SCALARS(PROM_SCALAR_)
#undef PROM_SCALAR_
}

void prom_render_with(buf *b, const ns_stats *s, int64_t now_ms,
                      const prom_process *proc)
{
    prom_scalars(b, s, NS_STAT_BEFORE_REJECTED);

    prom_head(b, "nodestate_updates_rejected_total", "counter",
              "Updates refused, by reason.");
    for (int r = 0; r < NS_REJECT_COUNT; r++) {
        const char *reason = stats_reject_name((ns_reject)r);
        buf_printf(b, "nodestate_updates_rejected_total{reason=\"%s\"} %" PRIu64
                   "\n", reason != NULL ? reason : "unknown",
                   atomic_load(&s->rejected[r]));
    }

    prom_scalars(b, s, NS_STAT_AFTER_REJECTED);

    prom_head(b, "nodestate_uptime_seconds", "gauge",
              "Seconds since the service started.");
    /* The wall clock can step back; uptime never goes negative. */
    int64_t up_ms = now_ms > s->start_ms ? now_ms - s->start_ms : 0;
    buf_puts(b, "nodestate_uptime_seconds ");
    prom_fixed(b, (uint64_t)up_ms, 3, 1000u);
    buf_append(b, "\n", 1);

#define PROM_HIST_(field, prom, bounds, help) prom_hist(b, prom, help, &s->field);
    NS_STATS_HISTS(PROM_HIST_)
#undef PROM_HIST_

    /*
     * Only codes that were answered: a series per possible code would be 500
     * mostly-zero samples. A code's series appears with its first answer, as
     * the client libraries do for label values they have not seen yet.
     */
    prom_head(b, "nodestate_http_responses_total", "counter",
              "HTTP responses sent, by status code.");
    for (int i = 0; i < NS_HTTP_CODES; i++) {
        uint64_t n = atomic_load(&s->http_responses[i]);
        if (n > 0)
            buf_printf(b, "nodestate_http_responses_total{code=\"%d\"} %" PRIu64
                       "\n", NS_HTTP_MIN + i, n);
    }

    prom_head(b, "nodestate_build_info", "gauge",
              "Always 1; the version nodestate was built as, in a label.");
    buf_puts(b, "nodestate_build_info{version=\"" NODESTATE_VERSION "\"} 1\n");

    if (s->start_ms >= 0) {
        prom_head(b, "process_start_time_seconds", "gauge",
                  "Start time of the process since the Unix epoch in seconds.");
        buf_puts(b, "process_start_time_seconds ");
        prom_fixed(b, (uint64_t)s->start_ms, 3, 1000u);
        buf_append(b, "\n", 1);
    }
    if (proc->resident_bytes >= 0)
        prom_gauge(b, "process_resident_memory_bytes",
                   "Resident memory size in bytes.", proc->resident_bytes);
    if (proc->open_fds >= 0)
        prom_gauge(b, "process_open_fds", "Number of open file descriptors.",
                   proc->open_fds);
}
