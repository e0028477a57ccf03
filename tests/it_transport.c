/*
 * it_transport: the HTTP transport against slow, greedy and malformed
 * clients, spoken to over raw TCP sockets (libcurl would normalise the very
 * headers under test). One address cannot take more than
 * --max-connections-per-ip connections while other addresses are served; a
 * client that trickles its headers is cut off at --header-timeout however
 * often it sends a byte, while a slow body is not; a request whose body
 * length is ambiguous gets exactly one answer, a 400 problem; one whose
 * header fields would leave no room for its answer gets a 431 problem and
 * is not applied; and the answers the library gives on its own are counted
 * in http_responses.
 *
 * Every wait is on the event itself (a close, an answer) with a generous
 * bound; nothing asserts how soon it came.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

/* Bound on every wait for the server to act; meeting the condition ends it. */
#define WAIT_S 30.0
/* Between two trickled lines: well under a second, the header timeout used. */
#define TRICKLE_MS 500

/* ---- raw sockets ---------------------------------------------------------- */

/* Reads one whole answer carrying Content-Length (keep-alive); asserts it came. */
static void raw_read_answer(int fd, char *buf, size_t cap)
{
    long long until = ns_mono_ms() + (long long)(WAIT_S * 1000);
    size_t len = 0;

    buf[0] = '\0';
    while (ns_mono_ms() < until) {
        const char *end = strstr(buf, "\r\n\r\n");
        const char *cl = strstr(buf, "Content-Length: ");

        if (end != NULL && cl != NULL && cl < end &&
            len >= (size_t)(end + 4 - buf) + strtoul(cl + 16, NULL, 10))
            return;
        cr_assert_eq(it_raw_read_for(fd, buf, cap, &len, 100), 0,
                     "closed before a whole answer: %.300s", buf);
    }
    cr_assert_fail("no whole answer within %.0f s: %.300s", WAIT_S, buf);
}

/* How many lines of the answer start with "HTTP/". */
static int status_lines(const char *answer)
{
    int n = 0;

    for (const char *p = answer; p != NULL; p = strstr(p, "\r\n")) {
        if (p != answer)
            p += 2;
        if (strncmp(p, "HTTP/", 5) == 0)
            n++;
    }
    return n;
}

/* One GET /healthz from src on a connection of its own: asserts a 200. */
static void healthz_from(const ns_server *s, const char *src)
{
    char buf[2048];
    size_t len;
    int fd = it_raw_connect(s, src);

    cr_assert_eq(ns_raw_send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                  "Connection: close\r\n\r\n"), 0);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    cr_assert(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "/healthz from %s: %.200s",
              src != NULL ? src : "127.0.0.1", buf);
    close(fd);
}

/* http_responses[code] of JSON /stats; 0 when absent. */
static long long answered(ns_server *s, const char *code)
{
    json_t *st = ns_stats(s);
    json_t *by_code;
    long long n = 0;

    cr_assert_not_null(st, "GET /stats failed");
    by_code = json_object_get(st, "http_responses");
    cr_assert(json_is_object(by_code), "http_responses missing");
    if (json_object_get(by_code, code) != NULL)
        n = json_integer_value(json_object_get(by_code, code));
    json_decref(st);
    return n;
}

/* ---- connections per address ------------------------------------------------ */

Test(transport, connections_past_the_per_ip_limit_are_refused)
{
    enum { LIMIT = 4 };
    ns_server *s = ns_start("--max-connections-per-ip %d --header-timeout 0", LIMIT);
    int held[LIMIT];
    char buf[2048];
    size_t len = 0;
    int extra;

    cr_assert_not_null(s);
    /* An answer on each proves the server has accepted and counts it. */
    for (int i = 0; i < LIMIT; i++) {
        held[i] = it_raw_connect(s, NULL);
        cr_assert_eq(ns_raw_send_str(held[i], "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
        raw_read_answer(held[i], buf, sizeof buf);
        cr_assert(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "%.200s", buf);
    }

    extra = it_raw_connect(s, NULL);
    (void)ns_raw_send_str(extra, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert_eq(it_raw_read_for(extra, buf, sizeof buf, &len, (int)(WAIT_S * 1000)), 1,
                 "connection %d from one address was not refused", LIMIT + 1);
    cr_assert_eq(len, 0, "the refused connection got an answer: %.200s", buf);
    close(extra);

    /* Another address is not held back by the first one's connections. */
    healthz_from(s, "127.0.0.2");

    /* A freed slot is usable again once the server has seen the close. */
    close(held[0]);
    {
        long long until = ns_mono_ms() + (long long)(WAIT_S * 1000);
        bool served = false;

        while (!served && ns_mono_ms() < until) {
            int fd = it_raw_connect(s, NULL);

            len = 0;
            buf[0] = '\0';
            if (ns_raw_send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                 "Connection: close\r\n\r\n") == 0 &&
                it_raw_read_for(fd, buf, sizeof buf, &len, (int)(WAIT_S * 1000)) == 1)
                served = strncmp(buf, "HTTP/1.1 200 ", 13) == 0;
            close(fd);
            if (!served)
                ns_sleep_ms(50);
        }
        cr_assert(served, "no connection from 127.0.0.1 served after one closed");
    }
    for (int i = 1; i < LIMIT; i++)
        close(held[i]);
    ns_free(s);
}

/* ---- the header deadline ---------------------------------------------------- */

/*
 * Sends one header line every TRICKLE_MS on fd, never the blank line, until
 * the server closes the connection; asserts that happens within WAIT_S.
 */
static void trickle_until_closed(int fd)
{
    long long until = ns_mono_ms() + (long long)(WAIT_S * 1000);
    char buf[1024];
    size_t len = 0;
    int line = 0;

    while (ns_mono_ms() < until) {
        char text[64];

        snprintf(text, sizeof text, "X-Trickle-%d: still here\r\n", line++);
        if (ns_raw_send_str(fd, text) != 0)
            return; /* reset: closed */
        if (it_raw_read_for(fd, buf, sizeof buf, &len, TRICKLE_MS) == 1)
            return;
    }
    cr_assert_fail("a client trickling its headers was still connected after %.0f s",
                   WAIT_S);
}

Test(transport, trickling_headers_are_cut_off_at_the_header_timeout)
{
    /* The idle timeout stays long: only the header deadline can end this. */
    ns_server *s = ns_start("--header-timeout 1 --connection-timeout 600");
    int fd;

    cr_assert_not_null(s);
    fd = it_raw_connect(s, NULL);
    cr_assert_eq(ns_raw_send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n"), 0);
    trickle_until_closed(fd);
    close(fd);
    healthz_from(s, NULL);
    ns_free(s);
}

Test(transport, a_kept_alive_connection_owes_each_requests_headers)
{
    ns_server *s = ns_start("--header-timeout 1 --connection-timeout 600");
    char buf[2048];
    int fd;

    cr_assert_not_null(s);
    fd = it_raw_connect(s, NULL);
    cr_assert_eq(ns_raw_send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    raw_read_answer(fd, buf, sizeof buf);
    cr_assert(strncmp(buf, "HTTP/1.1 200 ", 13) == 0, "%.200s", buf);
    /* The deadline starts again for the next request on the same connection. */
    cr_assert_eq(ns_raw_send_str(fd, "GET /healthz HTTP/1.1\r\n"), 0);
    trickle_until_closed(fd);
    close(fd);
    healthz_from(s, NULL);
    ns_free(s);
}

Test(transport, a_slow_body_is_not_cut_off_by_the_header_timeout)
{
    static const char body[] = "{\"status\":\"running\"}";
    ns_server *s = ns_start("--header-timeout 1 --connection-timeout 600");
    char head[256];
    char buf[4096];
    size_t len;
    int fd;

    cr_assert_not_null(s);
    fd = it_raw_connect(s, NULL);
    snprintf(head, sizeof head,
             "POST /runs/slow/nodes/n1/state HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n", strlen(body));
    cr_assert_eq(ns_raw_send_str(fd, head), 0);
    /* The body takes several header timeouts to arrive, a few bytes at a time. */
    for (size_t i = 0; i < strlen(body); i += 5) {
        size_t n = strlen(body) - i < 5 ? strlen(body) - i : 5;

        ns_sleep_ms(TRICKLE_MS);
        cr_assert_eq(ns_raw_send(fd, body + i, n), 0, "cut off after %zu body bytes", i);
    }
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    cr_assert(strncmp(buf, "HTTP/1.1 202 ", 13) == 0, "slow body: %.300s", buf);
    close(fd);
    ns_free(s);
}

/* ---- framing ------------------------------------------------------------------ */

/* Sends a raw request; asserts one answer, a problem of status and slug, then a close. */
static void expect_one_problem(ns_server *s, const char *request, int status,
                               const char *slug)
{
    char buf[8192];
    size_t len;
    const char *body;
    json_t *doc;
    json_error_t jerr;
    char want[96];
    int fd = it_raw_connect(s, NULL);

    (void)ns_raw_send_str(fd, request);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    close(fd);
    cr_assert_eq(status_lines(buf), 1, "request:\n%.300s\nanswer:\n%s", request, buf);
    snprintf(want, sizeof want, "HTTP/1.1 %d ", status);
    cr_assert(strncmp(buf, want, strlen(want)) == 0, "request:\n%.300s\nanswer:\n%s",
              request, buf);
    cr_assert_not_null(strstr(buf, "\r\nContent-Type: application/problem+json\r\n"),
                       "answer: %s", buf);
    body = strstr(buf, "\r\n\r\n");
    cr_assert_not_null(body);
    /* jansson refuses invalid UTF-8, so this also checks the encoding. */
    doc = json_loads(body + 4, 0, &jerr);
    cr_assert_not_null(doc, "body is not JSON (%s): %s", jerr.text, body + 4);
    snprintf(want, sizeof want, "urn:nodestate:problem:%s", slug);
    cr_assert_str_eq(ns_jstr(doc, "type"), want);
    cr_assert_eq(json_integer_value(json_object_get(doc, "status")), status);
    cr_assert_not_null(ns_jstr(doc, "title"));
    cr_assert_not_null(ns_jstr(doc, "detail"));
    json_decref(doc);
}

/* One answer, a 400 bad-framing problem, then a close. */
static void expect_one_framing_400(ns_server *s, const char *request)
{
    expect_one_problem(s, request, 400, "bad-framing");
}

#define POST_HEAD "POST /runs/fr/nodes/n1/state HTTP/1.1\r\nHost: x\r\n" \
                  "Content-Type: application/json\r\n"
#define BODY "{\"status\":\"running\"}"                /* 20 bytes */
#define CHUNKED_BODY "14\r\n" BODY "\r\n0\r\n\r\n"

Test(transport, ambiguous_body_lengths_get_one_400_problem)
{
    static const char *const requests[] = {
        /* Two different lengths: MHD 0.9.75 takes the first. */
        POST_HEAD "Content-Length: 20\r\nContent-Length: 25\r\n\r\n" BODY "12345",
        POST_HEAD "Content-Length: 25\r\nContent-Length: 20\r\n\r\n" BODY,
        /* Lengths MHD 0.9.75 refuses itself (400, or 413 for the overflow),
         * with its status line sent twice. */
        POST_HEAD "Content-Length: abc\r\n\r\n" BODY,
        POST_HEAD "Content-Length: 2x\r\n\r\n" BODY,
        POST_HEAD "Content-Length: -1\r\n\r\n" BODY,
        POST_HEAD "Content-Length: 20, 20\r\n\r\n" BODY,
        POST_HEAD "Content-Length: 20 \r\n\r\n" BODY,
        POST_HEAD "Content-Length: 99999999999999999999999\r\n\r\n" BODY,
        /* A length and chunked: MHD 0.9.75 goes by chunked. */
        POST_HEAD "Content-Length: 20\r\nTransfer-Encoding: chunked\r\n\r\n" CHUNKED_BODY,
        POST_HEAD "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" CHUNKED_BODY,
        /* A malformed length beside chunked: MHD 0.9.75 never reads the length. */
        POST_HEAD "Content-Length: abc\r\nTransfer-Encoding: chunked\r\n\r\n" CHUNKED_BODY,
        /* Codings we cannot delimit: MHD 0.9.75 would read to the end of the stream. */
        POST_HEAD "Transfer-Encoding: gzip\r\n\r\n" BODY,
        POST_HEAD "Transfer-Encoding: gzip, chunked\r\n\r\n" CHUNKED_BODY,
        POST_HEAD "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                  CHUNKED_BODY,
        /* Not only POST: any request can carry a smuggled one. */
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        "Content-Length: 4\r\n\r\nGET ",
        /*
         * Framing fields MHD 0.9.75 does not see as such: a blank before the
         * colon, a folded line (glued onto the name). It would read no body
         * and take the body for the next request.
         */
        POST_HEAD "Content-Length : 99\r\n\r\n" POST_HEAD "Content-Length: 20\r\n\r\n" BODY,
        POST_HEAD "Content-Length: 99\r\n 0\r\n\r\n" POST_HEAD "Content-Length: 20\r\n\r\n" BODY,
        POST_HEAD "Content-Length:\r\n\t99\r\n\r\n" POST_HEAD "Content-Length: 20\r\n\r\n" BODY,
        POST_HEAD "Transfer-Encoding : chunked\r\n\r\n" CHUNKED_BODY,
        POST_HEAD "X-A: b\r\n Content-Length: 99\r\n\r\n" POST_HEAD "Content-Length: 20\r\n\r\n"
                  BODY,
        /* A bare CR in a value: a line's end to a proxy, not to MHD. */
        POST_HEAD "X-A: b\rContent-Length: 99\r\n\r\n" POST_HEAD "Content-Length: 20\r\n\r\n"
                  BODY,
    };
    size_t n = sizeof requests / sizeof requests[0];
    ns_server *s = ns_start(NULL);
    long long before, before_413;
    ns_resp r = { 0 };

    cr_assert_not_null(s);
    before = answered(s, "400");
    before_413 = answered(s, "413");
    for (size_t i = 0; i < n; i++)
        expect_one_framing_400(s, requests[i]);
    /* Each counted once, as what it was answered. */
    cr_assert_eq(answered(s, "400"), before + (long long)n);
    cr_assert_eq(answered(s, "413"), before_413);
    /* Nothing of them was applied, and the server still serves. */
    cr_assert_eq(ns_req(s, "GET", "/runs/fr/nodes/n1/state", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 404, "a refused request was applied: %s", r.body);
    ns_resp_free(&r);
    healthz_from(s, NULL);
    ns_free(s);
}

Test(transport, equal_repeated_lengths_and_plain_chunked_are_served)
{
    static const char *const requests[] = {
        POST_HEAD "Content-Length: 20\r\nContent-Length: 20\r\nConnection: close\r\n\r\n" BODY,
        POST_HEAD "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" CHUNKED_BODY,
    };
    ns_server *s = ns_start(NULL);
    char buf[4096];
    size_t len;

    cr_assert_not_null(s);
    for (size_t i = 0; i < sizeof requests / sizeof requests[0]; i++) {
        int fd = it_raw_connect(s, NULL);

        cr_assert_eq(ns_raw_send_str(fd, requests[i]), 0);
        it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
        close(fd);
        cr_assert_eq(status_lines(buf), 1, "%s", buf);
        cr_assert(strncmp(buf, "HTTP/1.1 202 ", 13) == 0 ||
                  strncmp(buf, "HTTP/1.1 200 ", 13) == 0,
                  "request:\n%s\nanswer:\n%s", requests[i], buf);
    }
    ns_free(s);
}

/* ---- header fields that leave no room for the answer --------------------------- */

/* The service's bounds on a request's line and fields (README, "Slow and malformed clients"). */
#define FIELDS_MAX_BYTES 16384
#define FIELDS_MAX 100
#define HF_FIXED "Host: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n" \
                 "Connection: close\r\n"
#define HF_FIXED_FIELDS 4

/*
 * A POST of BODY to /runs/hf/nodes/<node>/state whose head (request line,
 * header fields and the blank line, as sent) takes exactly bytes, in
 * exactly fields fields: what the service measures. malloc'd.
 */
static char *post_with_fields(const char *node, size_t fields, size_t bytes)
{
    char path[96];
    size_t fill = fields - HF_FIXED_FIELDS;
    snprintf(path, sizeof path, "/runs/hf/nodes/%s/state", node);
    size_t cap = bytes + 256;
    char *req = malloc(cap);
    cr_assert_not_null(req);
    size_t n = (size_t)snprintf(req, cap, "POST %s HTTP/1.1\r\n" HF_FIXED, path);
    size_t used = n + fill * strlen("X000: \r\n") + strlen("\r\n");
    cr_assert(fields > HF_FIXED_FIELDS && bytes >= used, "%zu fields, %zu bytes", fields,
              bytes);
    size_t values = bytes - used;
    for (size_t i = 0; i < fill; i++) {
        size_t v = values / fill + (i < values % fill ? 1 : 0);
        n += (size_t)snprintf(req + n, cap - n, "X%03zu: ", i);
        memset(req + n, 'v', v);
        n += v;
        n += (size_t)snprintf(req + n, cap - n, "\r\n");
    }
    n += (size_t)snprintf(req + n, cap - n, "\r\n");
    cr_assert_eq(n, bytes);
    snprintf(req + n, cap - n, BODY);
    return req;
}

/* Status of GET /runs/hf/nodes/<node>/state. */
static long hf_node_status(ns_server *s, const char *node)
{
    char path[96];
    ns_resp r = { 0 };
    snprintf(path, sizeof path, "/runs/hf/nodes/%s/state", node);
    cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &r), 0, "%s", r.error);
    long status = r.status;
    ns_resp_free(&r);
    return status;
}

/*
 * MHD keeps a request's fields in the connection's 32 KiB pool, where the
 * answer's header must fit too: a POST whose fields took ~32.2 KB was
 * applied, then closed unanswered ("failed to create response header"),
 * and a client that gets no answer sends it again. Past the service's
 * bounds a request is refused 431 before anything is applied; at the
 * bounds, with the most fields, it is still answered.
 */
Test(transport, header_fields_past_the_bound_get_431_and_change_nothing)
{
    ns_server *s = ns_start(NULL);
    cr_assert_not_null(s);
    long long before = answered(s, "431");

    char *req = post_with_fields("at", FIELDS_MAX, FIELDS_MAX_BYTES);
    int fd = it_raw_connect(s, NULL);
    char buf[8192];
    size_t len;
    cr_assert_eq(ns_raw_send_str(fd, req), 0);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    close(fd);
    free(req);
    cr_assert(strncmp(buf, "HTTP/1.1 202 ", 13) == 0, "at the bounds: %.300s", buf);
    cr_assert_eq(hf_node_status(s, "at"), 200);

    req = post_with_fields("bytes", FIELDS_MAX, FIELDS_MAX_BYTES + 1);
    expect_one_problem(s, req, 431, "header-fields-too-large");
    free(req);
    req = post_with_fields("fields", FIELDS_MAX + 1, FIELDS_MAX_BYTES);
    expect_one_problem(s, req, 431, "header-fields-too-large");
    free(req);
    /* The blanks MHD strips around a value stay in its buffer: they count. */
    static char padded[24000];
    int at = snprintf(padded, sizeof padded, "POST /runs/hf/nodes/pad/state HTTP/1.1\r\n"
                      HF_FIXED "X-Pad:");
    memset(padded + at, ' ', 17000);
    snprintf(padded + at + 17000, sizeof padded - (size_t)at - 17000, "v\r\n\r\n" BODY);
    expect_one_problem(s, padded, 431, "header-fields-too-large");
    /* Query arguments are fields too. */
    char get[1024] = "GET /runs/hf/nodes?a";
    for (int i = 0; i < FIELDS_MAX; i++)
        strcat(get, "&a");
    strcat(get, " HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_one_problem(s, get, 431, "header-fields-too-large");
    cr_assert_eq(answered(s, "431"), before + 4, "each 431 counted once");
    cr_assert_eq(hf_node_status(s, "bytes"), 404, "a refused request was applied");
    cr_assert_eq(hf_node_status(s, "pad"), 404, "a refused request was applied");
    cr_assert_eq(hf_node_status(s, "fields"), 404, "a refused request was applied");

    /*
     * Up to the library's own 431: just below it, not even the 431 fits
     * and the connection is closed unanswered. Whatever the answer,
     * nothing is applied.
     */
    for (size_t bytes = 31500; bytes <= 32600; bytes += 50) {
        char node[32];
        snprintf(node, sizeof node, "near%zu", bytes);
        req = post_with_fields(node, HF_FIXED_FIELDS + 1, bytes);
        fd = it_raw_connect(s, NULL);
        (void)ns_raw_send_str(fd, req);
        it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
        close(fd);
        free(req);
        cr_assert(len == 0 || (strncmp(buf, "HTTP/1.1 431 ", 13) == 0 &&
                               status_lines(buf) == 1),
                  "%zu bytes of fields: %.300s", bytes, buf);
        cr_assert_eq(hf_node_status(s, node), 404, "%zu bytes of fields: applied", bytes);
    }
    healthz_from(s, NULL);
    ns_free(s);
}

/* ---- answers the library gives itself ----------------------------------------- */

Test(transport, library_answers_are_counted_by_code)
{
    ns_server *s = ns_start(NULL);
    size_t big = 64 * 1024;
    char *req = malloc(big + 128);
    char buf[4096];
    size_t len;
    long long b414, b431;
    int fd;

    cr_assert_not_null(s);
    cr_assert_not_null(req);
    b414 = answered(s, "414");
    b431 = answered(s, "431");

    /* A request line longer than MHD's buffer: 414. */
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', big);
    strcpy(req + 5 + big, " HTTP/1.1\r\nHost: x\r\n\r\n");
    fd = it_raw_connect(s, NULL);
    (void)ns_raw_send_str(fd, req);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    close(fd);
    cr_assert(strncmp(buf, "HTTP/1.1 414 ", 13) == 0, "long URI: %.200s", buf);
    cr_assert_eq(status_lines(buf), 1, "%s", buf);

    /* One header field longer than MHD's buffer: 431. */
    strcpy(req, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    len = strlen(req);
    memset(req + len, 'b', big);
    strcpy(req + len + big, "\r\n\r\n");
    fd = it_raw_connect(s, NULL);
    (void)ns_raw_send_str(fd, req);
    it_raw_read_to_close(fd, buf, sizeof buf, &len, WAIT_S);
    close(fd);
    cr_assert(strncmp(buf, "HTTP/1.1 431 ", 13) == 0, "long header: %.200s", buf);
    cr_assert_eq(status_lines(buf), 1, "%s", buf);

    cr_assert_eq(answered(s, "414"), b414 + 1, "414 not counted in http_responses");
    cr_assert_eq(answered(s, "431"), b431 + 1, "431 not counted in http_responses");
    free(req);
    healthz_from(s, NULL);
    ns_free(s);
}
