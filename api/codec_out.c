/*
 * codec_out.c: the encoders (a row, a problem, a page, a summary, a
 * deletion, the counters), written by hand into a buf. Apart from the
 * decoders because they share nothing with them, jansson included.
 */
#include "codec.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "text.h"

/* Longest problem detail answered, cut at a whole character. */
#define CODEC_PROBLEM_DETAIL_MAX 1024

/* ---- encoders: written by hand into buf, no jansson objects needed ---- */

/* A string literal, its length known at compile time. */
#define CODEC_LIT(b, s) buf_append((b), (s), sizeof(s) - 1)

static void codec_ts(buf *b, int64_t ms)
{
    if (ms == NS_TS_NULL) {
        CODEC_LIT(b, "null");
        return;
    }
    /* Quoted in place: one append instead of three. */
    char ts[NS_TS_BUF + 2];
    model_ts_format(ms, ts + 1);
    size_t n = strlen(ts + 1);
    ts[0] = '"';
    ts[n + 1] = '"';
    buf_append(b, ts, n + 2);
}

/* A decimal integer without printf, which dominated encoding a row. */
static void codec_i64(buf *b, int64_t v)
{
    char tmp[24];
    char *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0u - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10u);
        u /= 10u;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

/* Stored JSON text, already compact; NULL is JSON null. */
static void codec_raw_out(buf *b, const char *json)
{
    buf_puts(b, json != NULL ? json : "null");
}

static void codec_bool(buf *b, bool v)
{
    if (v)
        CODEC_LIT(b, "true");
    else
        CODEC_LIT(b, "false");
}

/*
 * A fixed-point number of millionths as an exact JSON number ("1.5",
 * "0.000002", "3.0"); the fraction is always there so clients see a float.
 */
static void codec_micro(buf *b, uint64_t micro)
{
    char frac[8];
    snprintf(frac, sizeof frac, "%06u", (unsigned)(micro % 1000000u));
    size_t n = strlen(frac);
    while (n > 1 && frac[n - 1] == '0')
        n--;
    buf_printf(b, "%" PRIu64 ".", micro / 1000000u);
    buf_append(b, frac, n);
}

/* The encoders of NS_NODE_FIELDS' kinds, codec_field_<kind>. */
static void codec_field_id(buf *b, const char *v)
{
    buf_json_string(b, v);
}

static void codec_field_status(buf *b, ns_status v)
{
    buf_json_string(b, model_status_name(v));
}

static void codec_field_int(buf *b, int64_t v)
{
    codec_i64(b, v);
}

static void codec_field_timestamp(buf *b, int64_t v)
{
    codec_ts(b, v);
}

static void codec_field_text(buf *b, const char *v)
{
    buf_json_string(b, v);
}

static void codec_field_bool(buf *b, bool v)
{
    codec_bool(b, v);
}

static void codec_field_json(buf *b, const char *v)
{
    codec_raw_out(b, v);
}

void codec_row(buf *b, const ns_row *row, bool durable)
{
    /* Every key goes out with a comma before it; the first comma becomes the brace. */
    size_t open = b->len;
#define CODEC_FIELD_(name, member, json, column, kind) \
    CODEC_LIT(b, ",\"" json "\":");                     \
    codec_field_##kind(b, row->member);
    NS_NODE_FIELDS(CODEC_FIELD_)
#undef CODEC_FIELD_
    CODEC_LIT(b, ",\"durable\":");
    codec_bool(b, durable);
    CODEC_LIT(b, "}");
    if (!b->failed)
        b->data[open] = '{';
}

void codec_problem(buf *b, int status, const char *slug, const char *title,
                   const char *detail, const ns_row *current, bool durable)
{
    /* The slug is ours, never the client's, so it needs no escaping. */
    buf_puts(b, "{\"type\":\"urn:nodestate:problem:");
    buf_puts(b, slug);
    buf_puts(b, "\",\"title\":");
    buf_json_string(b, title);
    buf_printf(b, ",\"status\":%d", status);
    if (detail != NULL) {
        /*
         * The one gate every detail passes: whatever request bytes a caller
         * put in, the answer stays valid UTF-8, cut at a whole character.
         */
        char safe[CODEC_PROBLEM_DETAIL_MAX];
        text_safe(safe, sizeof safe, detail, strlen(detail));
        buf_puts(b, ",\"detail\":");
        buf_json_string(b, safe);
    }
    if (current != NULL) {
        buf_puts(b, ",\"current\":");
        codec_row(b, current, durable);
    }
    buf_append(b, "}", 1);
}

void codec_page(buf *b, const char *run_id, const engine_page *page,
                const engine_durability *durability, int64_t deleted_seq)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_puts(b, ",\"nodes\":[");
    for (size_t i = 0; i < page->count; i++) {
        if (i > 0)
            buf_append(b, ",", 1);
        codec_row(b, page->rows[i], engine_durability_covers(durability, page->rows[i]->seq));
    }
    buf_puts(b, "],\"next\":");
    /* next is the cursor for ?after=, and only when more nodes follow. */
    if (page->more && page->count > 0)
        buf_json_string(b, page->rows[page->count - 1]->node_id);
    else
        buf_puts(b, "null");
    if (deleted_seq > 0)
        buf_printf(b, ",\"deleted_seq\":%" PRId64, deleted_seq);
    buf_append(b, "}", 1);
}

void codec_summary(buf *b, const char *run_id, const engine_summary *s)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_printf(b, ",\"nodes\":%zu,\"counts\":{", s->nodes);
    for (int st = 0; st < NS_STATUS_COUNT; st++)
        buf_printf(b, "%s\"%s\":%zu", st > 0 ? "," : "",
                   model_status_name((ns_status)st), s->counts[st]);
    buf_printf(b, "},\"last_seq\":%" PRId64 ",\"updated_at\":", s->last_seq);
    if (s->nodes == 0)
        buf_puts(b, "null");
    else
        codec_ts(b, s->updated_at);
    buf_append(b, "}", 1);
}

void codec_deleted(buf *b, const char *run_id, size_t deleted, int64_t seq,
                   bool durable)
{
    buf_puts(b, "{\"run_id\":");
    buf_json_string(b, run_id);
    buf_printf(b, ",\"deleted\":%zu,\"seq\":%" PRId64 ",\"durable\":", deleted,
               seq);
    codec_bool(b, durable);
    buf_append(b, "}", 1);
}

static void codec_hist(buf *b, const char *name, const ns_hist *h)
{
    buf_printf(b, ",\"%s\":{\"count\":%" PRIu64 ",\"sum\":", name,
               atomic_load(&h->count));
    codec_micro(b, atomic_load(&h->sum_micro));
    buf_append(b, "}", 1);
}

/* One member of the stats object; sep is "" for the first and "," after. */
static void codec_stat_u64(buf *b, const char **sep, const char *name,
                           uint64_t v)
{
    buf_printf(b, "%s\"%s\":%" PRIu64, *sep, name, v);
    *sep = ",";
}

static void codec_stat_i64(buf *b, const char **sep, const char *name,
                           int64_t v)
{
    buf_printf(b, "%s\"%s\":%" PRId64, *sep, name, v);
    *sep = ",";
}

#define CODEC_STAT(b, sep, name, v) \
    _Generic((v), uint64_t: codec_stat_u64, int64_t: codec_stat_i64)(b, sep, name, v)

/* The members of NS_STATS_SCALARS that go on this side of updates_rejected. */
static void codec_scalars(buf *b, const char **sep, const ns_stats *s,
                          ns_stat_at at)
{
#define CODEC_SCALAR_(field, prom, type, store, json_at, prom_at, help) \
    if ((json_at) == at)                                              \
        CODEC_STAT(b, sep, #field, NS_STAT_READ_##store(&s->field));
    NS_STATS_SCALARS(CODEC_SCALAR_)
#undef CODEC_SCALAR_
}

void codec_stats(buf *b, const ns_stats *s, int64_t now_ms)
{
    const char *sep = "";
    buf_append(b, "{", 1);
    codec_scalars(b, &sep, s, NS_STAT_BEFORE_REJECTED);
    buf_printf(b, "%s\"updates_rejected\":{", sep);
    for (int r = 0; r < NS_REJECT_COUNT; r++) {
        const char *name = stats_reject_name((ns_reject)r);
        buf_printf(b, "%s\"%s\":%" PRIu64, r > 0 ? "," : "",
                   name != NULL ? name : "unknown",
                   atomic_load(&s->rejected[r]));
    }
    buf_append(b, "}", 1);
    sep = ",";
    codec_scalars(b, &sep, s, NS_STAT_AFTER_REJECTED);
    buf_puts(b, ",\"uptime_seconds\":");
    /* The wall clock can step back; uptime never goes negative. */
    int64_t up_ms = now_ms > s->start_ms ? now_ms - s->start_ms : 0;
    codec_micro(b, (uint64_t)up_ms * 1000u);
#define CODEC_HIST_(field, prom, bounds, help) codec_hist(b, #field, &s->field);
    NS_STATS_HISTS(CODEC_HIST_)
#undef CODEC_HIST_
    /* Codes never answered are left out, as in the Prometheus text. */
    buf_puts(b, ",\"http_responses\":{");
    bool first = true;
    for (int i = 0; i < NS_HTTP_CODES; i++) {
        uint64_t n = atomic_load(&s->http_responses[i]);
        if (n == 0)
            continue;
        buf_printf(b, "%s\"%d\":%" PRIu64, first ? "" : ",", NS_HTTP_MIN + i, n);
        first = false;
    }
    buf_puts(b, "}}");
}
