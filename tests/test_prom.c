#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "prom.h"
#include "stats.h"

/* Bounds chosen to exercise the number formatting. */
static const double test_bounds[] = { 1e-7, 0.005, 1, 2.5, 100000 };
#define N_TEST_BOUNDS (sizeof test_bounds / sizeof *test_bounds)

static ns_stats stats;   /* too big for comfort on the stack; reset per test */

static void fill_stats(void)
{
    stats_init(&stats, 4096);
    stats.start_ms = 5000;
    atomic_store(&stats.updates_queued, 101);
    atomic_store(&stats.updates_processed, 102);
    atomic_store(&stats.batches_written, 103);
    atomic_store(&stats.errors, 104);
    atomic_store(&stats.updates_coalesced, 105);
    atomic_store(&stats.rows_written, 106);
    atomic_store(&stats.runs_deleted, 107);
    atomic_store(&stats.runs_expired, 108);
    atomic_store(&stats.updates_duplicate, 108);
    atomic_store(&stats.rejected[NS_REJECT_INVALID], 11);
    atomic_store(&stats.rejected[NS_REJECT_STALE], 12);
    atomic_store(&stats.rejected[NS_REJECT_ILLEGAL], 13);
    atomic_store(&stats.rejected[NS_REJECT_QUEUE_FULL], 14);
    atomic_store(&stats.queue_depth, 15);
    atomic_store(&stats.queue_bytes, 4242);
    atomic_store(&stats.cache_nodes, 16);
    atomic_store(&stats.cache_runs, 17);
    atomic_store(&stats.cache_bytes, 4096);
    atomic_store(&stats.cache_loads, 18);
    atomic_store(&stats.cache_evictions, 21);
    atomic_store(&stats.cache_nodes_evicted, 23);
    atomic_store(&stats.cache_run_loads, 24);
    atomic_store(&stats.rows_isolated, 22);
    atomic_store(&stats.last_seq, 19);
    atomic_store(&stats.durable_seq, 20);

    /* commit_seconds gets our own bounds and hand-set per-bucket counts */
    ns_hist *h = &stats.commit_seconds;
    h->bounds = test_bounds;
    h->n_bounds = N_TEST_BOUNDS;
    for (size_t i = 0; i <= NS_HIST_MAX_BUCKETS; i++)
        atomic_store(&h->counts[i], 0);
    atomic_store(&h->counts[0], 1);
    atomic_store(&h->counts[1], 2);
    atomic_store(&h->counts[3], 4);
    atomic_store(&h->counts[N_TEST_BOUNDS], 3);  /* +Inf */
    atomic_store(&h->count, 10);
    atomic_store(&h->sum_micro, 7250001);

    /* the others are filled the way the engine does it */
    stats_observe(&stats.batch_updates, 1);
    stats_observe(&stats.batch_updates, 7);
    stats_observe(&stats.batch_updates, 1e12);
    stats_observe(&stats.enqueue_to_commit_seconds, 0.02);
}

static char *render(int64_t now_ms)
{
    buf b;
    buf_init(&b);
    prom_render(&b, &stats, now_ms);
    cr_assert_not(b.failed);
    char *text = buf_steal(&b, NULL);
    cr_assert_not_null(text);
    return text;
}

/* The value text of the sample line "<series> <value>", or NULL. */
static const char *sample(const char *text, const char *series, char *out,
                          size_t outlen)
{
    size_t n = strlen(series);
    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        cr_assert_not_null(end, "last line not terminated");
        if ((size_t)(end - line) > n && strncmp(line, series, n) == 0 &&
            line[n] == ' ') {
            size_t vlen = (size_t)(end - line) - n - 1;
            cr_assert_lt(vlen, outlen);
            memcpy(out, line + n + 1, vlen);
            out[vlen] = '\0';
            return out;
        }
        line = end + 1;
    }
    return NULL;
}

static void assert_sample(const char *text, const char *series, const char *want)
{
    char v[64];
    cr_assert_not_null(sample(text, series, v, sizeof v), "no sample %s", series);
    cr_assert_str_eq(v, want, "%s: %s, want %s", series, v, want);
}

static unsigned long long sample_u(const char *text, const char *series)
{
    char v[64];
    cr_assert_not_null(sample(text, series, v, sizeof v), "no sample %s", series);
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    cr_assert_eq(*end, '\0', "%s is not an integer: %s", series, v);
    return n;
}

Test(prom, counters_and_gauges, .init = fill_stats)
{
    char *t = render(5000 + 90500);
    assert_sample(t, "nodestate_updates_queued_total", "101");
    assert_sample(t, "nodestate_updates_processed_total", "102");
    assert_sample(t, "nodestate_batches_written_total", "103");
    assert_sample(t, "nodestate_errors_total", "104");
    assert_sample(t, "nodestate_updates_coalesced_total", "105");
    assert_sample(t, "nodestate_rows_written_total", "106");
    assert_sample(t, "nodestate_runs_deleted_total", "107");
    assert_sample(t, "nodestate_runs_expired_total", "108");
    assert_sample(t, "nodestate_updates_duplicate_total", "108");
    assert_sample(t, "nodestate_updates_rejected_total{reason=\"invalid\"}", "11");
    assert_sample(t, "nodestate_updates_rejected_total{reason=\"stale\"}", "12");
    assert_sample(t, "nodestate_updates_rejected_total{reason=\"illegal\"}", "13");
    assert_sample(t, "nodestate_updates_rejected_total{reason=\"queue_full\"}", "14");
    assert_sample(t, "nodestate_queue_depth", "15");
    assert_sample(t, "nodestate_queue_capacity", "4096");
    assert_sample(t, "nodestate_queue_bytes", "4242");
    assert_sample(t, "nodestate_cache_nodes", "16");
    assert_sample(t, "nodestate_cache_runs", "17");
    assert_sample(t, "nodestate_cache_bytes", "4096");
    assert_sample(t, "nodestate_cache_loads_total", "18");
    assert_sample(t, "nodestate_cache_evictions_total", "21");
    assert_sample(t, "nodestate_cache_nodes_evicted_total", "23");
    assert_sample(t, "nodestate_cache_run_loads_total", "24");
    assert_sample(t, "nodestate_rows_isolated_total", "22");
    assert_sample(t, "nodestate_last_seq", "19");
    assert_sample(t, "nodestate_durable_seq", "20");
    assert_sample(t, "nodestate_uptime_seconds", "90.5");
    free(t);

    /* whole seconds, and a clock that stepped back */
    t = render(5000 + 3000);
    assert_sample(t, "nodestate_uptime_seconds", "3");
    free(t);
    t = render(0);
    assert_sample(t, "nodestate_uptime_seconds", "0");
    free(t);
}

Test(prom, types_of_families, .init = fill_stats)
{
    static const struct { const char *name, *type; } families[] = {
        { "nodestate_updates_queued_total", "counter" },
        { "nodestate_updates_processed_total", "counter" },
        { "nodestate_batches_written_total", "counter" },
        { "nodestate_errors_total", "counter" },
        { "nodestate_updates_coalesced_total", "counter" },
        { "nodestate_rows_written_total", "counter" },
        { "nodestate_runs_deleted_total", "counter" },
        { "nodestate_runs_expired_total", "counter" },
        { "nodestate_updates_duplicate_total", "counter" },
        { "nodestate_updates_rejected_total", "counter" },
        { "nodestate_queue_depth", "gauge" },
        { "nodestate_queue_capacity", "gauge" },
        { "nodestate_queue_bytes", "gauge" },
        { "nodestate_cache_nodes", "gauge" },
        { "nodestate_cache_runs", "gauge" },
        { "nodestate_cache_bytes", "gauge" },
        { "nodestate_cache_loads_total", "counter" },
        { "nodestate_cache_evictions_total", "counter" },
        { "nodestate_cache_nodes_evicted_total", "counter" },
        { "nodestate_cache_run_loads_total", "counter" },
        { "nodestate_cache_invalidations_total", "counter" },
        { "nodestate_rows_isolated_total", "counter" },
        { "nodestate_store_conflicts_total", "counter" },
        { "nodestate_checkpoint_failures_total", "counter" },
        { "nodestate_wal_frames", "gauge" },
        { "nodestate_last_seq", "gauge" },
        { "nodestate_durable_seq", "gauge" },
        { "nodestate_uptime_seconds", "gauge" },
        { "nodestate_commit_duration_seconds", "histogram" },
        { "nodestate_batch_updates", "histogram" },
        { "nodestate_enqueue_to_commit_seconds", "histogram" },
        { "nodestate_http_responses_total", "counter" },
        { "nodestate_build_info", "gauge" },
        { "process_start_time_seconds", "gauge" },
        { "process_resident_memory_bytes", "gauge" },
        { "process_open_fds", "gauge" },
    };
    char *t = render(6000);
    for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
        char want[128];
        snprintf(want, sizeof want, "\n# TYPE %s %s\n", families[i].name,
                 families[i].type);
        /* the first line has no newline before it */
        cr_assert(strstr(t, want) != NULL || strncmp(t, want + 1, strlen(want) - 1) == 0,
                  "missing %s", want + 1);
    }
    free(t);
}

/* The family a sample belongs to, per the TYPE seen for it. */
static bool belongs(const char *series, const char *family, const char *type)
{
    size_t n = strlen(family);
    if (strncmp(series, family, n) != 0)
        return false;
    const char *rest = series + n;
    if (*rest == '\0' || *rest == '{')
        return true;
    if (strcmp(type, "histogram") == 0)
        return strncmp(rest, "_bucket{", 8) == 0 || strcmp(rest, "_sum") == 0 ||
               strcmp(rest, "_count") == 0;
    return false;
}

Test(prom, help_and_type_precede_every_family, .init = fill_stats)
{
    char *t = render(6000);
    char family[128] = "";
    char type[32] = "";
    bool have_help = false;
    char seen[80][128];
    size_t n_seen = 0;
    size_t samples = 0;

    char *save = NULL;
    for (char *line = strtok_r(t, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char name[128], word[64];
        if (strncmp(line, "# HELP ", 7) == 0) {
            cr_assert_eq(sscanf(line + 7, "%127s %63s", name, word), 2,
                         "HELP without text: %s", line);
            for (size_t i = 0; i < n_seen; i++)
                cr_assert_str_neq(seen[i], name, "family %s twice", name);
            cr_assert_lt(n_seen, 80);
            strcpy(seen[n_seen++], name);
            strcpy(family, name);
            type[0] = '\0';
            have_help = true;
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            cr_assert_eq(sscanf(line + 7, "%127s %31s", name, type), 2);
            cr_assert(have_help, "TYPE before HELP: %s", line);
            cr_assert_str_eq(name, family, "TYPE for another family: %s", line);
        } else {
            cr_assert_neq(line[0], '#', "unexpected comment: %s", line);
            char *space = strrchr(line, ' ');
            cr_assert_not_null(space, "no value: %s", line);
            *space = '\0';
            cr_assert_neq(type[0], '\0', "sample before TYPE: %s", line);
            cr_assert(belongs(line, family, type), "sample %s outside its family %s",
                      line, family);
            char *end;
            strtod(space + 1, &end);
            cr_assert_eq(*end, '\0', "bad value in %s %s", line, space + 1);
            samples++;
        }
    }
    cr_assert_eq(n_seen, 41);
    cr_assert_gt(samples, 20);
    free(t);
}

Test(prom, histogram_buckets_cumulative, .init = fill_stats)
{
    char *t = render(6000);
    const char *pfx = "nodestate_commit_duration_seconds";
    static const char *les[] = { "1e-07", "0.005", "1", "2.5", "100000", "+Inf" };
    static const unsigned long long want[] = { 1, 3, 3, 7, 7, 10 };
    for (size_t i = 0; i < 6; i++) {
        char series[128];
        snprintf(series, sizeof series, "%s_bucket{le=\"%s\"}", pfx, les[i]);
        cr_assert_eq(sample_u(t, series), want[i], "%s", series);
    }
    /* _count follows the buckets, +Inf == _count */
    assert_sample(t, "nodestate_commit_duration_seconds_count", "10");
    assert_sample(t, "nodestate_commit_duration_seconds_sum", "7.250001");

    /* batch_updates from stats_observe: 1, 7, 1e12 */
    unsigned long long prev = 0;
    const ns_hist *h = &stats.batch_updates;
    for (size_t i = 0; i < h->n_bounds; i++) {
        char le[32], series[128];
        snprintf(le, sizeof le, "%g", h->bounds[i]);
        cr_assert_eq(strtod(le, NULL), h->bounds[i]);  /* %g is exact for these */
        snprintf(series, sizeof series, "nodestate_batch_updates_bucket{le=\"%s\"}", le);
        unsigned long long v = sample_u(t, series);
        cr_assert_geq(v, prev, "%s not monotone", series);
        cr_assert_eq(v, h->bounds[i] >= 7 ? 2u : 1u, "%s", series);
        prev = v;
    }
    cr_assert_eq(sample_u(t, "nodestate_batch_updates_bucket{le=\"+Inf\"}"), 3);
    cr_assert_eq(sample_u(t, "nodestate_batch_updates_count"), 3);

    /* one observation of 0.02 s, counted in +Inf too */
    cr_assert_eq(sample_u(t, "nodestate_enqueue_to_commit_seconds_bucket{le=\"+Inf\"}"), 1);
    assert_sample(t, "nodestate_enqueue_to_commit_seconds_sum", "0.02");
    free(t);
}

Test(prom, fresh_stats_render_zeroes)
{
    stats_init(&stats, 10);
    stats.start_ms = 0;
    char *t = render(0);
    assert_sample(t, "nodestate_updates_queued_total", "0");
    assert_sample(t, "nodestate_commit_duration_seconds_bucket{le=\"+Inf\"}", "0");
    assert_sample(t, "nodestate_commit_duration_seconds_sum", "0");
    assert_sample(t, "nodestate_commit_duration_seconds_count", "0");
    assert_sample(t, "nodestate_queue_capacity", "10");
    cr_assert_eq(t[strlen(t) - 1], '\n');
    free(t);
}

/* A sample line "<series> " exists at all. */
static bool has_series(const char *text, const char *series)
{
    char v[64];
    return sample(text, series, v, sizeof v) != NULL;
}

Test(prom, http_responses_by_code, .init = fill_stats)
{
    atomic_store(&stats.http_responses[100 - NS_HTTP_MIN], 1);
    atomic_store(&stats.http_responses[200 - NS_HTTP_MIN], 40);
    atomic_store(&stats.http_responses[409 - NS_HTTP_MIN], 2);
    atomic_store(&stats.http_responses[599 - NS_HTTP_MIN], 3);
    char *t = render(6000);
    assert_sample(t, "nodestate_http_responses_total{code=\"100\"}", "1");
    assert_sample(t, "nodestate_http_responses_total{code=\"200\"}", "40");
    assert_sample(t, "nodestate_http_responses_total{code=\"409\"}", "2");
    assert_sample(t, "nodestate_http_responses_total{code=\"599\"}", "3");
    /* codes never answered have no series */
    cr_assert_not(has_series(t, "nodestate_http_responses_total{code=\"404\"}"));
    cr_assert_eq(strstr(t, "nodestate_http_responses_total{code=\"404\"}"), NULL);
    size_t lines = 0;
    for (const char *p = t; (p = strstr(p, "\nnodestate_http_responses_total{")) != NULL; p++)
        lines++;
    cr_assert_eq(lines, 4);
    free(t);
}

Test(prom, build_info_and_start_time, .init = fill_stats)
{
    char *t = render(6000);
    assert_sample(t, "nodestate_build_info{version=\"" NODESTATE_VERSION "\"}", "1");
    assert_sample(t, "process_start_time_seconds", "5");
    free(t);

    /* milliseconds as a decimal fraction of a second, no exponent */
    stats.start_ms = INT64_C(1764174449123);
    t = render(INT64_C(1764174449123));
    assert_sample(t, "process_start_time_seconds", "1764174449.123");
    free(t);
}

static char *render_with(int64_t rss, int64_t fds)
{
    prom_process proc = { .resident_bytes = rss, .open_fds = fds };
    buf b;
    buf_init(&b);
    prom_render_with(&b, &stats, 6000, &proc);
    cr_assert_not(b.failed);
    char *text = buf_steal(&b, NULL);
    cr_assert_not_null(text);
    return text;
}

Test(prom, process_metrics_given, .init = fill_stats)
{
    char *t = render_with(INT64_C(123457536), 9);
    assert_sample(t, "process_resident_memory_bytes", "123457536");
    assert_sample(t, "process_open_fds", "9");
    free(t);
}

Test(prom, process_metrics_left_out_when_unreadable, .init = fill_stats)
{
    char *t = render_with(-1, -1);
    /* no sample and no HELP/TYPE either: an empty family says nothing */
    cr_assert_eq(strstr(t, "process_resident_memory_bytes"), NULL);
    cr_assert_eq(strstr(t, "process_open_fds"), NULL);
    /* the rest is still there */
    assert_sample(t, "process_start_time_seconds", "5");
    assert_sample(t, "nodestate_updates_queued_total", "101");
    free(t);

    t = render_with(4096, -1);
    assert_sample(t, "process_resident_memory_bytes", "4096");
    cr_assert_eq(strstr(t, "process_open_fds"), NULL);
    free(t);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_geq(fputs(text, f), 0);
    cr_assert_eq(fclose(f), 0);
}

/* A fake procfs process directory: statm text and fd entries by name. */
static void fake_proc(char *dir, size_t len, const char *statm,
                      const char *const *fds, size_t n_fds)
{
    snprintf(dir, len, "/tmp/test_prom.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    char path[512];
    if (statm != NULL) {
        snprintf(path, sizeof path, "%s/statm", dir);
        write_file(path, statm);
    }
    if (fds != NULL) {
        snprintf(path, sizeof path, "%s/fd", dir);
        cr_assert_eq(mkdir(path, 0700), 0);
        for (size_t i = 0; i < n_fds; i++) {
            snprintf(path, sizeof path, "%s/fd/%s", dir, fds[i]);
            write_file(path, "");
        }
    }
}

static void rm_fake_proc(const char *dir, const char *const *fds, size_t n_fds)
{
    char path[512];
    for (size_t i = 0; i < n_fds; i++) {
        snprintf(path, sizeof path, "%s/fd/%s", dir, fds[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/fd", dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/statm", dir);
    unlink(path);
    rmdir(dir);
}

Test(prom, process_read_from_fake_proc)
{
    /* names far above any descriptor this test has open, and one that is not a number */
    static const char *const fds[] = { "0", "1", "2", "100000", "100001", "notanfd" };
    char dir[64];
    fake_proc(dir, sizeof dir, "2000 25 10 1 0 30 0\n", fds, 6);
    prom_process p;
    prom_process_read(dir, &p);
    long page = sysconf(_SC_PAGESIZE);
    cr_assert_gt(page, 0);
    cr_assert_eq(p.resident_bytes, 25 * (int64_t)page);
    cr_assert_eq(p.open_fds, 5);
    rm_fake_proc(dir, fds, 6);
}

Test(prom, process_read_failures)
{
    prom_process p;
    prom_process_read("/nonexistent/nodestate-test", &p);
    cr_assert_eq(p.resident_bytes, -1);
    cr_assert_eq(p.open_fds, -1);

    /* statm that does not parse; no fd directory */
    char dir[64];
    fake_proc(dir, sizeof dir, "garbage\n", NULL, 0);
    prom_process_read(dir, &p);
    cr_assert_eq(p.resident_bytes, -1);
    cr_assert_eq(p.open_fds, -1);
    rm_fake_proc(dir, NULL, 0);

    /* only one number */
    fake_proc(dir, sizeof dir, "2000\n", NULL, 0);
    prom_process_read(dir, &p);
    cr_assert_eq(p.resident_bytes, -1);
    rm_fake_proc(dir, NULL, 0);
}

Test(prom, process_read_self_counts_descriptors)
{
    prom_process before, after;
    prom_process_read("/proc/self", &before);
    cr_assert_gt(before.resident_bytes, 0);
    cr_assert_geq(before.open_fds, 0);
    int extra[3];
    for (int i = 0; i < 3; i++) {
        extra[i] = open("/dev/null", O_RDONLY);
        cr_assert_geq(extra[i], 0);
    }
    prom_process_read("/proc/self", &after);
    for (int i = 0; i < 3; i++)
        close(extra[i]);
    cr_assert_eq(after.open_fds, before.open_fds + 3);

    /* the count is the descriptors open, the listing's own one not included */
    int64_t open_now = 0;
    for (int fd = 0; fd < 65536; fd++)
        if (fcntl(fd, F_GETFD) != -1)
            open_now++;
    cr_assert_eq(before.open_fds, open_now);

    /* prom_render reports the same process */
    fill_stats();
    char *t = render(6000);
    cr_assert_gt(sample_u(t, "process_resident_memory_bytes"), 0);
    cr_assert_eq(sample_u(t, "process_open_fds"), (unsigned long long)before.open_fds);
    free(t);
}
