/*
 * Unit tests for stats: the counter lists (NS_STATS_SCALARS, NS_STATS_HISTS)
 * drive both answers, and the README's two tables of counters name exactly
 * what the service renders: the "Counters" table every member of the JSON
 * /stats object once, each beside its Prometheus family, and the Prometheus
 * table every family of /metrics once, with its type. A counter added to the
 * list (or by hand) without its README rows fails here, as does a README row
 * for a counter the service does not have.
 */
#include <criterion/criterion.h>

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"
#include "prom.h"
#include "doc_table.h"
#include "stats.h"

#define COUNTERS_HEADER "| JSON | Prometheus | meaning |"
#define PROM_HEADER "| metric | type | meaning |"
#define MAX_NAMES 64

/* A list of names, each with a second string (its pair or its type). */
typedef struct names {
    char name[MAX_NAMES][80];
    char other[MAX_NAMES][80];
    size_t n;
} names;

static void names_add(names *l, const char *name, size_t len, const char *other)
{
    cr_assert_lt(l->n, (size_t)MAX_NAMES, "more than %d names", MAX_NAMES);
    cr_assert_lt(len, sizeof l->name[0], "name too long: %.*s", (int)len, name);
    memcpy(l->name[l->n], name, len);
    l->name[l->n][len] = '\0';
    snprintf(l->other[l->n], sizeof l->other[0], "%s", other);
    l->n++;
}

/* The index of name in l, or -1; the test fails if it is there twice. */
static int names_find(const names *l, const char *name)
{
    int at = -1;
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->name[i], name) != 0)
            continue;
        cr_assert_eq(at, -1, "\"%s\" is listed twice", name);
        at = (int)i;
    }
    return at;
}

/* Every name of a once and in b, and the other way round. */
static void names_same(const names *a, const char *a_is, const names *b, const char *b_is)
{
    for (size_t i = 0; i < a->n; i++)
        cr_assert_geq(names_find(b, a->name[i]), 0, "%s has \"%s\", %s has not", a_is,
                      a->name[i], b_is);
    for (size_t i = 0; i < b->n; i++)
        cr_assert_geq(names_find(a, b->name[i]), 0, "%s has \"%s\", %s has not", b_is,
                      b->name[i], a_is);
    cr_assert_eq(a->n, b->n);
}

/*
 * The name in the first backtick span of cell, up to a label or member
 * suffix: `updates_rejected.{…}` is updates_rejected, `x_total{code="…"}`
 * x_total. Returns where the span ends, or NULL when the cell has no more.
 */
static const char *span_name(const char *cell, const char **name, size_t *len)
{
    const char *open = strchr(cell, '`');
    if (open == NULL)
        return NULL;
    const char *close = strchr(open + 1, '`');
    cr_assert_not_null(close, "unclosed backtick in %s", cell);
    *name = open + 1;
    *len = strcspn(*name, ".{`");
    return close + 1;
}

/* The Counters table: JSON member, with its Prometheus family as the other. */
static void readme_counters(const char *readme, names *out)
{
    out->n = 0;
    for (const char *p = doc_table_find(readme, COUNTERS_HEADER); *p == '|';
         p = doc_table_next(p)) {
        char json[128], prom[128], meaning[512];
        const char *q = doc_table_cell(p + 1, json, sizeof json);
        q = doc_table_cell(q, prom, sizeof prom);
        doc_table_cell(q, meaning, sizeof meaning);
        const char *jn, *pn;
        size_t jl, pl;
        cr_assert_not_null(span_name(json, &jn, &jl), "a Counters row without a JSON name");
        cr_assert_not_null(span_name(prom, &pn, &pl), "a Counters row without a metric");
        char prom_name[80];
        cr_assert_lt(pl, sizeof prom_name);
        memcpy(prom_name, pn, pl);
        prom_name[pl] = '\0';
        names_add(out, jn, jl, prom_name);
        cr_assert_gt(strlen(meaning), 0, "README: %s does not say what it counts", json);
    }
}

/* The Prometheus table: every family named in a row, with the row's type. */
static void readme_families(const char *readme, names *out)
{
    out->n = 0;
    for (const char *p = doc_table_find(readme, PROM_HEADER); *p == '|';
         p = doc_table_next(p)) {
        char metrics[256], type[64];
        const char *q = doc_table_cell(p + 1, metrics, sizeof metrics);
        doc_table_cell(q, type, sizeof type);
        const char *name, *rest = metrics;
        size_t len;
        int in_row = 0;
        while ((rest = span_name(rest, &name, &len)) != NULL) {
            names_add(out, name, len, type);
            in_row++;
        }
        cr_assert_gt(in_row, 0, "a Prometheus row names no metric: %s", metrics);
    }
}

static ns_stats stats;   /* too big for comfort on the stack */

/*
 * Every value nonzero and distinct, and every optional family present: a
 * counted status code, a start time, and the process gauges.
 */
static void fill(void)
{
    stats_init(&stats, 4096);
    uint64_t v = 1000;
#define SET_au64(p, x) atomic_store(p, x)
#define SET_ai64(p, x) atomic_store(p, (int64_t)(x))
#define SET_u64(p, x) (*(p) = (x))
#define FILL_(field, prom, type, store, json_at, prom_at, help) \
    SET_##store(&stats.field, v++);
    NS_STATS_SCALARS(FILL_)
#undef FILL_
#define OBSERVE_(field, prom, bounds, help) stats_observe(&stats.field, 1);
    NS_STATS_HISTS(OBSERVE_)
#undef OBSERVE_
    for (int r = 0; r < NS_REJECT_COUNT; r++)
        atomic_store(&stats.rejected[r], (uint64_t)r + 1);
    stats_count_http(&stats, 202);
}

/* The members of the JSON /stats object. */
static void rendered_members(names *out)
{
    buf b;
    buf_init(&b);
    codec_stats(&b, &stats, stats.start_ms + 1000);
    cr_assert_not(b.failed);
    json_error_t err;
    json_t *j = json_loadb(b.data, b.len, 0, &err);
    cr_assert_not_null(j, "codec_stats is not JSON: %s", err.text);
    out->n = 0;
    const char *key;
    json_t *value;
    json_object_foreach(j, key, value)
        names_add(out, key, strlen(key), "");
    json_decref(j);
    buf_free(&b);
}

/* The families of the Prometheus text, from its # TYPE lines, with their types. */
static void rendered_families(names *out, buf *b)
{
    prom_process proc = { .resident_bytes = 4096, .open_fds = 7 };
    buf_init(b);
    prom_render_with(b, &stats, stats.start_ms + 1000, &proc);
    cr_assert_not(b->failed);
    out->n = 0;
    for (const char *p = strstr(b->data, "# TYPE "); p; p = strstr(p + 1, "\n# TYPE ")) {
        if (*p == '\n')
            p++;
        const char *name = p + strlen("# TYPE ");
        size_t len = strcspn(name, " \n");
        char type[32];
        size_t tl = strcspn(name + len + 1, "\n");
        cr_assert_lt(tl, sizeof type);
        memcpy(type, name + len + 1, tl);
        type[tl] = '\0';
        names_add(out, name, len, type);
    }
}

Test(stats, the_lists_drive_both_answers, .init = fill)
{
    buf json, text;
    buf_init(&json);
    codec_stats(&json, &stats, stats.start_ms);
    cr_assert_not(json.failed);
    names families;
    rendered_families(&families, &text);
    uint64_t v = 1000;
    char want[512];   /* longer than any line below */
#define CHECK_SCALAR_(field, prom, type, store, json_at, prom_at, help)                  \
    snprintf(want, sizeof want, "\"%s\":%" PRIu64 ",", #field, v);                       \
    cr_assert_not_null(strstr(json.data, want), "JSON /stats lacks %s", want);           \
    snprintf(want, sizeof want, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", prom,   \
             help, prom, #type, prom, v);                                                \
    cr_assert_not_null(strstr(text.data, want), "the Prometheus text lacks\n%s", want); \
    v++;
    NS_STATS_SCALARS(CHECK_SCALAR_)
#undef CHECK_SCALAR_
#define CHECK_HIST_(field, prom, bounds, help)                                           \
    snprintf(want, sizeof want, "\"%s\":{\"count\":1,", #field);                         \
    cr_assert_not_null(strstr(json.data, want), "JSON /stats lacks %s", want);           \
    snprintf(want, sizeof want, "# HELP %s %s\n# TYPE %s histogram\n", prom, help, prom); \
    cr_assert_not_null(strstr(text.data, want), "the Prometheus text lacks\n%s", want);
    NS_STATS_HISTS(CHECK_HIST_)
#undef CHECK_HIST_
    buf_free(&json);
    buf_free(&text);
}

Test(stats, readme_counters_table_lists_every_json_member, .init = fill)
{
    char *readme = doc_table_slurp("README.md");
    names rows, members, families;
    readme_counters(readme, &rows);
    rendered_members(&members);
    buf text;
    rendered_families(&families, &text);
    buf_free(&text);

    names_same(&rows, "README's Counters table", &members, "the JSON /stats object");
    /* Each row's metric is one the service serves, and the list's pairs hold. */
    for (size_t i = 0; i < rows.n; i++)
        cr_assert_geq(names_find(&families, rows.other[i]), 0,
                      "README's Counters table pairs %s with %s, which /metrics lacks",
                      rows.name[i], rows.other[i]);
    int at;
#define PAIR_(field, prom, ...)                                                         \
    at = names_find(&rows, #field);                                                     \
    cr_assert_geq(at, 0, "README's Counters table lacks %s", #field);                   \
    cr_assert_str_eq(rows.other[at], prom, "README's Counters table: %s is %s, not %s", \
                     #field, prom, rows.other[at]);
    NS_STATS_SCALARS(PAIR_)
    NS_STATS_HISTS(PAIR_)
#undef PAIR_
    free(readme);
}

Test(stats, readme_prometheus_table_lists_every_family, .init = fill)
{
    char *readme = doc_table_slurp("README.md");
    names rows, families;
    readme_families(readme, &rows);
    buf text;
    rendered_families(&families, &text);
    buf_free(&text);

    names_same(&rows, "README's Prometheus table", &families, "the Prometheus text");
    for (size_t i = 0; i < rows.n; i++) {
        int at = names_find(&families, rows.name[i]);
        cr_assert_str_eq(rows.other[i], families.other[at],
                         "README's Prometheus table: %s is a %s, /metrics says %s",
                         rows.name[i], rows.other[i], families.other[at]);
    }
    free(readme);
}
