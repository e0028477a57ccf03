/*
 * http_client: libcurl requests for the integration tests. Each client owns
 * one easy handle, so its connection is kept alive between requests; the
 * answer's body and selected headers are collected by the callbacks below.
 */
#include "http_client.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bounded_wait.h"

/* Per-request bounds: a server that does not answer fails the request. */
#define NS_HTTP_TIMEOUT_MS 30000L
#define NS_CONNECT_TIMEOUT_MS 5000L

struct ns_client {
    CURL *h;
    int port;
};

int ns_http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void ns_http_global_cleanup(void)
{
    curl_global_cleanup();
}

/* The response being filled by curl's callbacks. */
typedef struct ns_fill {
    ns_resp *out;
    size_t cap;
    bool oom;
} ns_fill;

static size_t ns_on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    ns_fill *f = ctx;
    size_t n = size * nmemb;
    ns_resp *r = f->out;
    if (r->body_len + n + 1 > f->cap) {
        size_t cap = f->cap ? f->cap : 1024;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *grown = realloc(r->body, cap);
        if (grown == NULL) {
            f->oom = true;
            return 0; /* makes curl fail the request */
        }
        r->body = grown;
        f->cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static void ns_copy_value(char *dst, size_t dst_len, const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
        n--;
    if (n >= dst_len)
        n = dst_len - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t ns_on_header(char *data, size_t size, size_t nmemb, void *ctx)
{
    ns_fill *f = ctx;
    ns_resp *r = f->out;
    size_t n = size * nmemb;
    /* A new status line (after a 100 Continue, say) starts a new header set. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        r->content_type[0] = r->etag[0] = r->retry_after[0] = r->allow[0] = '\0';
        r->www_authenticate[0] = r->vary[0] = r->content_length[0] = '\0';
        return n;
    }
    static const struct {
        const char *name;
        size_t off;
        size_t len;
    } wanted[] = {
        { "content-type", offsetof(ns_resp, content_type), sizeof r->content_type },
        { "etag", offsetof(ns_resp, etag), sizeof r->etag },
        { "retry-after", offsetof(ns_resp, retry_after), sizeof r->retry_after },
        { "allow", offsetof(ns_resp, allow), sizeof r->allow },
        { "vary", offsetof(ns_resp, vary), sizeof r->vary },
        { "content-length", offsetof(ns_resp, content_length), sizeof r->content_length },
        { "www-authenticate", offsetof(ns_resp, www_authenticate),
          sizeof r->www_authenticate },
    };
    for (size_t i = 0; i < sizeof wanted / sizeof *wanted; i++) {
        size_t nl = strlen(wanted[i].name);
        if (n > nl && data[nl] == ':' && strncasecmp(data, wanted[i].name, nl) == 0)
            ns_copy_value((char *)r + wanted[i].off, wanted[i].len,
                          data + nl + 1, n - nl - 1);
    }
    return n;
}

/* curl_easy_setopt with its result checked; jumps to fail on error. */
#define NS_SETOPT(h, opt, val)                                                \
    do {                                                                      \
        CURLcode rc_ = curl_easy_setopt((h), (opt), (val));                   \
        if (rc_ != CURLE_OK) {                                                \
            snprintf(out->error, sizeof out->error, "curl_easy_setopt(%s): %s", \
                     #opt, curl_easy_strerror(rc_));                          \
            goto fail;                                                        \
        }                                                                     \
    } while (0)

ns_client *ns_client_new(const ns_server *s)
{
    return ns_client_new_port(ns_port(s));
}

ns_client *ns_client_new_port(int port)
{
    ns_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->port = port;
    c->h = curl_easy_init();
    if (c->h == NULL) {
        free(c);
        return NULL;
    }
    ns_resp scratch = { 0 };
    ns_resp *out = &scratch; /* where NS_SETOPT reports */
    NS_SETOPT(c->h, CURLOPT_NOSIGNAL, 1L);
    NS_SETOPT(c->h, CURLOPT_TIMEOUT_MS, NS_HTTP_TIMEOUT_MS);
    NS_SETOPT(c->h, CURLOPT_CONNECTTIMEOUT_MS, NS_CONNECT_TIMEOUT_MS);
    NS_SETOPT(c->h, CURLOPT_WRITEFUNCTION, ns_on_body);
    NS_SETOPT(c->h, CURLOPT_HEADERFUNCTION, ns_on_header);
    NS_SETOPT(c->h, CURLOPT_TCP_NODELAY, 1L);
    NS_SETOPT(c->h, CURLOPT_PROXY, ""); /* never an environment proxy */
    return c;
fail:
    fprintf(stderr, "harness: %s\n", scratch.error);
    curl_easy_cleanup(c->h);
    free(c);
    return NULL;
}

void ns_client_free(ns_client *c)
{
    if (c == NULL)
        return;
    curl_easy_cleanup(c->h);
    free(c);
}

void ns_resp_free(ns_resp *r)
{
    if (r == NULL)
        return;
    free(r->body);
    memset(r, 0, sizeof *r);
}

static bool ns_has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':')
            return true;
    return false;
}

int ns_client_req_len(ns_client *c, const char *method, const char *path,
                      const char *body, size_t body_len,
                      const char *const *headers, ns_resp *out)
{
    struct curl_slist *list = NULL;
    ns_resp_free(out);
    out->body = calloc(1, 1);
    if (out->body == NULL) {
        snprintf(out->error, sizeof out->error, "out of memory");
        return -1;
    }
    ns_fill fill = { .out = out, .cap = 1 };

    char url[2048];
    int n = snprintf(url, sizeof url, "http://127.0.0.1:%d%s", c->port, path);
    if (n < 0 || (size_t)n >= sizeof url) {
        snprintf(out->error, sizeof out->error, "path too long");
        goto fail;
    }
    /* Expect: 100-continue would add a round trip to every larger body. */
    const char *fixed[3] = { "Expect:", NULL, NULL };
    if (body != NULL && !ns_has_header(headers, "Content-Type"))
        fixed[1] = "Content-Type: application/json";
    for (size_t i = 0; fixed[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(list, fixed[i]);
        if (l == NULL)
            goto oom;
        list = l;
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(list, headers[i]);
        if (l == NULL)
            goto oom;
        list = l;
    }

    CURL *h = c->h;
    NS_SETOPT(h, CURLOPT_URL, url);
    NS_SETOPT(h, CURLOPT_HTTPHEADER, list);
    NS_SETOPT(h, CURLOPT_WRITEDATA, &fill);
    NS_SETOPT(h, CURLOPT_HEADERDATA, &fill);
    NS_SETOPT(h, CURLOPT_NOBODY, 0L);
    /* The handle is reused: reset the method first, then set this one. */
    NS_SETOPT(h, CURLOPT_HTTPGET, 1L);
    NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (body != NULL) {
        NS_SETOPT(h, CURLOPT_POST, 1L);
        NS_SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        NS_SETOPT(h, CURLOPT_POSTFIELDS, body);
    }
    if (strcmp(method, "HEAD") == 0)
        NS_SETOPT(h, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, method);
    else if (strcmp(method, "POST") == 0 && body == NULL)
        NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, "POST");

    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        snprintf(out->error, sizeof out->error, "%s %s: %s%s", method, path,
                 curl_easy_strerror(rc), fill.oom ? " (out of memory)" : "");
        goto fail;
    }
    long status = 0;
    if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK) {
        snprintf(out->error, sizeof out->error, "no response code");
        goto fail;
    }
    out->status = status;
    /* The list must outlive the request only; detach it before freeing. */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_slist_free_all(list);
    return 0;

oom:
    snprintf(out->error, sizeof out->error, "out of memory");
fail:
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_slist_free_all(list);
    out->status = 0;
    return -1;
}

int ns_client_req(ns_client *c, const char *method, const char *path,
                  const char *body, const char *const *headers, ns_resp *out)
{
    return ns_client_req_len(c, method, path, body,
                             body != NULL ? strlen(body) : 0, headers, out);
}

int ns_req(ns_server *s, const char *method, const char *path,
           const char *body, const char *const *headers, ns_resp *out)
{
    return ns_client_req(ns_main_client(s), method, path, body, headers, out);
}

int ns_req_len(ns_server *s, const char *method, const char *path,
               const char *body, size_t body_len, const char *const *headers,
               ns_resp *out)
{
    return ns_client_req_len(ns_main_client(s), method, path, body, body_len, headers,
                             out);
}

typedef struct ns_req_cond {
    ns_server *s;
    const char *method;
    const char *path;
    long want;
    ns_resp *out;
} ns_req_cond;

static bool ns_req_answered(void *ctx)
{
    ns_req_cond *c = ctx;
    return ns_req(c->s, c->method, c->path, NULL, NULL, c->out) == 0 &&
           c->out->status == c->want;
}

int ns_req_until(ns_server *s, const char *method, const char *path,
                 long want, ns_resp *out, double timeout_s, long step_ms)
{
    ns_req_cond c = { s, method, path, want, out };
    return ns_wait_until(ns_req_answered, &c, timeout_s, step_ms);
}

/* The node's state path; 0, or -1 with out's error set when it is too long. */
static int ns_state_path(char *path, size_t size, const char *run,
                         const char *node, const char *query, ns_resp *out)
{
    int n = snprintf(path, size, "/runs/%s/nodes/%s/state%s", run, node,
                     query != NULL ? query : "");
    if (n < 0 || (size_t)n >= size) {
        ns_resp_free(out);
        snprintf(out->error, sizeof out->error, "path too long");
        return -1;
    }
    return 0;
}

int ns_post_state(ns_server *s, const char *run, const char *node,
                  const char *query, const char *json, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, query, out) != 0)
        return -1;
    return ns_req(s, "POST", path, json, NULL, out);
}

int ns_client_post_state(ns_client *c, const char *run, const char *node,
                         const char *json, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, NULL, out) != 0)
        return -1;
    return ns_client_req(c, "POST", path, json, NULL, out);
}

int ns_get_state(ns_server *s, const char *run, const char *node, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, NULL, out) != 0)
        return -1;
    return ns_req(s, "GET", path, NULL, NULL, out);
}
