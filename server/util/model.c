#include "model.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const status_names[NS_STATUS_COUNT] = {
    "idle", "scheduled", "running", "paused", "suspended", "completed", "failed",
};

static const int status_ranks[NS_STATUS_COUNT] = { 0, 1, 2, 2, 2, 3, 3 };

static const char *const ts_names[NS_TS_COUNT] = {
    "scheduled_at", "started_at", "completed_at", "failed_at", "suspended_at",
};

const char *model_status_name(ns_status s)
{
    if ((unsigned)s >= NS_STATUS_COUNT)
        return NULL;
    return status_names[s];
}

int model_status_parse(const char *name, ns_status *out)
{
    for (int i = 0; i < NS_STATUS_COUNT; i++) {
        if (strcmp(name, status_names[i]) == 0) {
            *out = (ns_status)i;
            return 0;
        }
    }
    return -1;
}

int model_status_rank(ns_status s)
{
    if ((unsigned)s >= NS_STATUS_COUNT)
        return -1;
    return status_ranks[s];
}

bool model_status_terminal(ns_status s)
{
    return model_status_rank(s) == 3;
}

int model_status_ts_field(ns_status s)
{
    switch (s) {
    case NS_SCHEDULED: return NS_TS_SCHEDULED;
    case NS_RUNNING: return NS_TS_STARTED;
    case NS_COMPLETED: return NS_TS_COMPLETED;
    case NS_FAILED: return NS_TS_FAILED;
    case NS_SUSPENDED: return NS_TS_SUSPENDED;
    default: return -1;
    }
}

const char *model_ts_field_name(ns_ts_field f)
{
    if ((unsigned)f >= NS_TS_COUNT)
        return NULL;
    return ts_names[f];
}

bool model_id_valid(const char *id, size_t len)
{
    if (len == 0 || len > NS_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '~' ||
                  c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

int64_t model_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t model_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

uint64_t model_hash(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

void model_ts_format(int64_t ms, char buf[NS_TS_BUF])
{
    int64_t days = floor_div(ms, 86400000);
    int64_t rem = ms - days * 86400000;
    int64_t y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    int h = (int)(rem / 3600000);
    int mi = (int)(rem / 60000 % 60);
    int s = (int)(rem / 1000 % 60);
    int milli = (int)(rem % 1000);
    /* Years outside 0..9999 cannot come from model_ts_parse; clamp the width anyway. */
    if (y < 0 || y > 9999)
        y = y < 0 ? 0 : 9999;
    buf[0] = (char)('0' + y / 1000);
    buf[1] = (char)('0' + y / 100 % 10);
    buf[2] = (char)('0' + y / 10 % 10);
    buf[3] = (char)('0' + y % 10);
    buf[4] = '-';
    buf[5] = (char)('0' + mo / 10);
    buf[6] = (char)('0' + mo % 10);
    buf[7] = '-';
    buf[8] = (char)('0' + d / 10);
    buf[9] = (char)('0' + d % 10);
    buf[10] = 'T';
    buf[11] = (char)('0' + h / 10);
    buf[12] = (char)('0' + h % 10);
    buf[13] = ':';
    buf[14] = (char)('0' + mi / 10);
    buf[15] = (char)('0' + mi % 10);
    buf[16] = ':';
    buf[17] = (char)('0' + s / 10);
    buf[18] = (char)('0' + s % 10);
    buf[19] = '.';
    buf[20] = (char)('0' + milli / 100);
    buf[21] = (char)('0' + milli / 10 % 10);
    buf[22] = (char)('0' + milli % 10);
    buf[23] = 'Z';
    buf[24] = '\0';
}

/* Reads exactly n digits at *p into *out and advances; -1 if any is not a digit. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static bool leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int model_ts_parse(const char *s, int64_t *ms)
{
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    const char *p = s;
    int y, mo, d, h, mi, sec, milli = 0;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d))
        return -1;
    if (*p != 'T' && *p != 't')
        return -1;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || sec > 60)
        return -1;
    if (d > mdays[mo - 1] + (mo == 2 && leap(y)))
        return -1;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                milli = milli * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return -1;
        for (; n < 3; n++)
            milli *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        int oh, om;
        p++;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return -1;
        offset_min = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (*p != '\0')
        return -1;
    /* A leap second is folded into the next second: SQLite and JSON users expect a valid time. */
    int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 +
                   (int64_t)h * 3600 + (int64_t)mi * 60 + sec - (int64_t)offset_min * 60;
    /* An offset can carry a time past year 9999 or before year 0 in UTC, which the
     * stored four-digit form cannot hold: refuse it rather than store another time. */
    int64_t first = days_from_civil(0, 1, 1) * 86400;
    int64_t end = days_from_civil(10000, 1, 1) * 86400;
    if (secs < first || secs >= end)
        return -1;
    *ms = secs * 1000 + milli;
    return 0;
}

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

/* Copies s into the packed area at *cursor; returns the copy or NULL for NULL. */
static const char *pack(char **cursor, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *dst = *cursor;
    memcpy(dst, s, n);
    *cursor += n;
    return dst;
}

size_t model_row_bytes(const ns_row *row)
{
    return sizeof *row + str_size(row->run_id) + str_size(row->node_id) +
           str_size(row->last_error) + str_size(row->suspension_reason) +
           str_size(row->resume_state) + str_size(row->outputs);
}

ns_row *model_row_copy(const ns_row *draft)
{
    ns_row *row = malloc(model_row_bytes(draft));
    if (!row)
        return NULL;
    memcpy(row, draft, sizeof *row);
    atomic_init(&row->refs, 1);
    char *cursor = row->data;
    row->run_id = pack(&cursor, draft->run_id);
    row->node_id = pack(&cursor, draft->node_id);
    row->last_error = pack(&cursor, draft->last_error);
    row->suspension_reason = pack(&cursor, draft->suspension_reason);
    row->resume_state = pack(&cursor, draft->resume_state);
    row->outputs = pack(&cursor, draft->outputs);
    return row;
}

void model_row_ref(ns_row *row)
{
    atomic_fetch_add_explicit(&row->refs, 1, memory_order_relaxed);
}

void model_row_unref(ns_row *row)
{
    if (row && atomic_fetch_sub_explicit(&row->refs, 1, memory_order_acq_rel) == 1)
        free(row);
}

static bool str_same(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

bool model_row_same(const ns_row *a, const ns_row *b)
{
    if (a->status != b->status || a->attempt != b->attempt ||
        a->retryable != b->retryable)
        return false;
    for (int i = 0; i < NS_TS_COUNT; i++)
        if (a->ts[i] != b->ts[i])
            return false;
    return str_same(a->run_id, b->run_id) && str_same(a->node_id, b->node_id) &&
           str_same(a->last_error, b->last_error) &&
           str_same(a->suspension_reason, b->suspension_reason) &&
           str_same(a->resume_state, b->resume_state) &&
           str_same(a->outputs, b->outputs);
}
