/*
 * json_check: the JSON side of the server's answers: parsing, typed members,
 * the RFC 9457 problem shape and RFC 3339 timestamps.
 */
#include "json_check.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

json_t *ns_resp_json(const ns_resp *r)
{
    if (r->body == NULL || r->body_len == 0)
        return NULL;
    json_error_t err;
    return json_loadb(r->body, r->body_len, 0, &err);
}

const char *ns_jstr(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int ns_jint(const json_t *o, const char *key, long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return -1;
    *out = (long long)json_integer_value(v);
    return 0;
}

bool ns_jnull(const json_t *o, const char *key)
{
    return json_is_null(json_object_get(o, key));
}

int ns_check_problem(const ns_resp *r, long status, const char *slug,
                     char *why, size_t why_len)
{
    int rc = -1;
    json_t *doc = NULL;
    if (r->status != status) {
        snprintf(why, why_len, "status %ld, want %ld (body %.300s)", r->status,
                 status, r->body != NULL ? r->body : "");
        goto out;
    }
    if (strncasecmp(r->content_type, "application/problem+json", 24) != 0) {
        snprintf(why, why_len, "Content-Type \"%s\", want application/problem+json",
                 r->content_type);
        goto out;
    }
    doc = ns_resp_json(r);
    if (!json_is_object(doc)) {
        snprintf(why, why_len, "body is not a JSON object: %.300s",
                 r->body != NULL ? r->body : "");
        goto out;
    }
    char want_type[160];
    snprintf(want_type, sizeof want_type, "urn:nodestate:problem:%s", slug);
    const char *type = ns_jstr(doc, "type");
    const char *title = ns_jstr(doc, "title");
    const char *detail = ns_jstr(doc, "detail");
    long long st = 0;
    if (type == NULL || strcmp(type, want_type) != 0) {
        snprintf(why, why_len, "type %s, want %s", type ? type : "(missing)",
                 want_type);
        goto out;
    }
    if (title == NULL || title[0] == '\0') {
        snprintf(why, why_len, "title missing or empty: %.300s", r->body);
        goto out;
    }
    if (ns_jint(doc, "status", &st) != 0 || st != status) {
        snprintf(why, why_len, "body status missing or not %ld: %.300s", status,
                 r->body);
        goto out;
    }
    if (detail == NULL || detail[0] == '\0') {
        snprintf(why, why_len, "detail missing or empty: %.300s", r->body);
        goto out;
    }
    rc = 0;
    if (why_len > 0)
        why[0] = '\0';
out:
    json_decref(doc);
    return rc;
}

long long ns_ts_ms(const char *ts)
{
    if (ts == NULL)
        return -1;
    struct tm tm = { 0 };
    int ms = 0, used = 0;
    if (sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &used) != 6)
        return -1;
    const char *p = ts + used;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if (strcmp(p, "Z") != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t secs = timegm(&tm);
    if (secs == (time_t)-1)
        return -1;
    return (long long)secs * 1000 + ms;
}
