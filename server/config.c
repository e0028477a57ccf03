#include "config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "log.h"

#ifndef NODESTATE_VERSION
/* The build defines it; this keeps a hand-compiled file building. */
#define NODESTATE_VERSION "0.0.0"
#endif

#define ENV_PREFIX "NODESTATE_"
/* Room for NODESTATE_ plus the longest option name. */
#define ENV_NAME_MAX 64
/* A year: long enough for any real use, small enough that no caller's
 * seconds-to-nanoseconds conversion can overflow. */
#define SECONDS_MAX 31536000.0
/* Ten years: retention is counted in days; still far from any overflow in ms. */
#define DURATION_MAX (10 * SECONDS_MAX)

/* How a value is parsed and which field type it lands in. */
typedef enum opt_kind {
    OPT_LISTEN,   /* HOST:PORT or [IPv6]:PORT -> listen_host, listen_port */
    OPT_PATH,     /* non-empty string -> char[] */
    OPT_SIZE,     /* whole number in [min, max] -> size_t */
    OPT_UINT,     /* whole number in [min, max] -> unsigned */
    OPT_BYTES,    /* whole number of bytes, optional K/M/G (powers of 1024),
                     in [min, max] -> size_t */
    OPT_SECONDS,  /* finite number in [0, max_seconds] -> double */
    OPT_SYNC,     /* normal|full -> bool */
    OPT_LEVEL,    /* debug|info|warn|error -> int (NS_LOG_*) */
    OPT_SECRET,   /* the token: visible ASCII, never echoed -> char[] */
    OPT_BOOL,     /* on/off; "--name" alone is on -> bool */
    OPT_DURATION  /* a number with s, m, h or d after it (none: seconds), or
                     off (0), in [0, max_seconds] -> double seconds */
} opt_kind;

/*
 * One row per option: it drives parsing, the environment lookup, --help,
 * config_defaults and config_format, so adding an option is adding a row.
 */
typedef struct option_def {
    const char *name;      /* the flag without "--" */
    opt_kind kind;
    size_t offset;         /* of the field in struct config */
    size_t field_size;     /* of that field (for OPT_PATH) */
    uint64_t min, max;     /* range of OPT_SIZE / OPT_UINT / OPT_BYTES */
    double max_seconds;    /* upper bound of OPT_SECONDS */
    const char *def;       /* the default, written as a user would; NULL: none */
    const char *metavar;
    const char *help;
} option_def;

#define FIELD(f) offsetof(config, f), sizeof(((config *)0)->f)

static const option_def options[] = {
    {"listen", OPT_LISTEN, FIELD(listen_host), 0, 0, 0, "127.0.0.1:8080",
     "HOST:PORT",
     "address to serve on; [IPv6]:PORT for IPv6, port 0 takes any free port"},
    {"db", OPT_PATH, FIELD(db_path), 0, 0, 0, "./nodestate.db", "PATH",
     "SQLite database file (WAL mode), or a PostgreSQL URI\n"
     "      (postgresql://... or postgres://...) several instances may share"},
    {"spill-path", OPT_PATH, FIELD(spill_path), 0, 0, 0, NULL, "PATH",
     "local SQLite sidecar for writes the database would not take by\n"
     "      shutdown; unset: <db>.spill, or ./nodestate-pg.spill for PostgreSQL"},
    {"batch-size", OPT_SIZE, FIELD(batch_size), 1, 1000000, 0, "8192", "N",
     "most queued updates written in one transaction"},
    {"batch-interval", OPT_SECONDS, FIELD(batch_interval), 0, 0, 60, "0.1",
     "SECONDS", "longest the oldest queued update waits for its batch (<= 60)"},
    {"group-commit-delay", OPT_SECONDS, FIELD(group_commit_delay), 0, 0, 60, "0",
     "SECONDS",
     "longest a commit asked for by a ?wait=true request waits to gather\n"
     "      more of them into one commit (never past --batch-interval; not after\n"
     "      a commit of one update); 0 = none"},
    {"queue-capacity", OPT_SIZE, FIELD(queue_capacity), 1, (uint64_t)1 << 30, 0,
     "262144", "N", "most updates queued at once; past it writes get 503"},
    {"queue-max-bytes", OPT_BYTES, FIELD(queue_max_bytes), 1 << 20,
     (uint64_t)1 << 40, 0, "128M", "BYTES",
     "most bytes held by updates accepted and not yet written; past it\n"
     "      writes get 503 (K, M, G suffixes: powers of 1024)"},
    {"cache-max-nodes", OPT_SIZE, FIELD(cache_max_nodes), 0, (uint64_t)1 << 40, 0,
     "1000000", "N",
     "most nodes kept in memory; idle nodes past it are evicted (least\n"
     "      recently used first) and read back from SQLite; 0 = no bound"},
    {"cache-max-bytes", OPT_BYTES, FIELD(cache_max_bytes), 0, (uint64_t)1 << 40, 0,
     "256M", "BYTES",
     "most bytes of node state kept in memory; idle nodes past it are\n"
     "      evicted like --cache-max-nodes; 0 = no bound (K, M, G suffixes)"},
    {"shutdown-timeout", OPT_SECONDS, FIELD(shutdown_timeout), 0, 0,
     SECONDS_MAX, "10", "SECONDS",
     "time allowed on SIGTERM to answer requests and flush the queue (or\n"
     "      spill it to <db>.spill); the process exits within it plus 1 s"},
    {"synchronous", OPT_SYNC, FIELD(synchronous_full), 0, 0, 0, "normal",
     "normal|full", "SQLite synchronous mode; full also survives power loss"},
    {"threads", OPT_UINT, FIELD(threads), 0, 256, 0, "0", "N",
     "HTTP worker threads; 0 = one per core"},
    {"max-body-bytes", OPT_BYTES, FIELD(max_body_bytes), 1, (uint64_t)1 << 30, 0,
     "1M", "BYTES", "largest request body; larger ones get 413 (<= 1 GiB)"},
    {"max-batch-updates", OPT_SIZE, FIELD(max_batch_updates), 1, 1000000, 0,
     "10000", "N",
     "most updates in one POST /runs/{run_id}/nodes; more get 413"},
    {"max-batch-body-bytes", OPT_BYTES, FIELD(max_batch_body_bytes), 1,
     (uint64_t)1 << 30, 0, "16M", "BYTES",
     "largest body of POST /runs/{run_id}/nodes (many updates); larger\n"
     "      ones get 413 (<= 1 GiB)"},
    {"max-error-bytes", OPT_BYTES, FIELD(max_error_bytes), 1, (uint64_t)1 << 30, 0,
     "64K", "BYTES",
     "longest last_error or suspension_reason accepted in an update; longer\n"
     "      ones get 422"},
    {"max-connections", OPT_UINT, FIELD(max_connections), 1, 1000000, 0, "1024",
     "N", "most client connections open at once"},
    {"max-connections-per-ip", OPT_UINT, FIELD(max_connections_per_ip), 0,
     1000000, 0, "256", "N",
     "most connections open at once from one client address; 0 = no bound"},
    {"header-timeout", OPT_SECONDS, FIELD(header_timeout), 0, 0, 3600, "10",
     "SECONDS",
     "time a client has to send a request's headers once it connects\n"
     "      or starts a request on a kept-alive connection; 0 = no limit"},
    {"connection-timeout", OPT_UINT, FIELD(connection_timeout), 0, 31536000, 0,
     "60", "SECONDS", "whole seconds an idle connection stays open; 0 = forever"},
    {"max-wait", OPT_SECONDS, FIELD(max_wait), 0, 0, SECONDS_MAX, "60",
     "SECONDS", "cap on ?timeout= of a POST ...?wait=true"},
    {"log-level", OPT_LEVEL, FIELD(log_level), 0, 0, 0, "info",
     "debug|info|warn|error", "lowest level of log line written to stderr"},
    {"token", OPT_SECRET, FIELD(token), 0, 0, 0, NULL, "TOKEN",
     "require Authorization: Bearer TOKEN on every route but /healthz;\n"
     "      unset: no auth. Other users can see a command line: prefer\n"
     "      --token-file or the variable"},
    {"token-file", OPT_PATH, FIELD(token_file), 0, 0, 0, NULL, "PATH",
     "read the token from this file (trailing newline stripped)"},
    {"access-log", OPT_BOOL, FIELD(access_log), 0, 0, 0, "false", "",
     "log one info line per answered request (method, path, status, bytes,\n"
     "      duration); the variable takes 1/true or 0/false"},
    {"port-file", OPT_PATH, FIELD(port_file), 0, 0, 0, NULL, "PATH",
     "once listening, write the bound port (a line of digits) to this\n"
     "      file, created anew; handy with --listen HOST:0"},
    {"tls-cert", OPT_PATH, FIELD(tls_cert), 0, 0, 0, NULL, "PATH",
     "serve HTTPS with this PEM certificate (chain); needs --tls-key;\n"
     "      read once at start"},
    {"tls-key", OPT_PATH, FIELD(tls_key), 0, 0, 0, NULL, "PATH",
     "the PEM private key of --tls-cert (unencrypted)"},
    {"max-backups", OPT_UINT, FIELD(max_backups), 1, 64, 0, "1", "N",
     "GET /backup answers in progress at once; one more gets 503.\n"
     "      Each holds a copy of the database on disk while it is sent"},
    {"retention", OPT_DURATION, FIELD(retention), 0, 0, DURATION_MAX, "off",
     "DURATION",
     "delete runs whose nodes are all completed or failed and whose last\n"
     "      update is older than this (30m, 12h, 7d; a bare number is seconds);\n"
     "      off or 0 keeps every run"},
    {"retention-interval", OPT_DURATION, FIELD(retention_interval), 0, 0,
     DURATION_MAX, "1m", "DURATION",
     "how often --retention sweeps the database for such runs (a page of\n"
     "      rows at a time); 0 sweeps again as soon as a sweep ends"},
    {"max-watchers", OPT_SIZE, FIELD(max_watchers), 0, 1000000, 0, "1024", "N",
     "most event streams and long polls open at once; beyond it they get 503"},
    {"watch-buffer-bytes", OPT_BYTES, FIELD(watch_buffer_bytes), 1024,
     (uint64_t)1 << 40, 0, "1M", "BYTES",
     "bytes of changes a synced event stream may fall behind before it is\n"
     "      dropped (the client resumes with Last-Event-ID)"},
    {"watch-heartbeat", OPT_SECONDS, FIELD(watch_heartbeat), 0, 0, 3600, "15",
     "SECONDS", "seconds between comment lines on an event stream; 0 = none"},
};

#define OPTION_COUNT (sizeof options / sizeof options[0])

/* "batch-size" -> "NODESTATE_BATCH_SIZE". */
static void env_name(const option_def *o, char buf[ENV_NAME_MAX])
{
    size_t n = strlen(ENV_PREFIX);

    memcpy(buf, ENV_PREFIX, n);
    for (const char *p = o->name; *p && n + 1 < ENV_NAME_MAX; p++)
        buf[n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    buf[n] = '\0';
}

/* "--batch-size: <what> (from <source>)". */
static void fail(char *err, size_t errlen, const option_def *o,
                 const char *source, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void fail(char *err, size_t errlen, const option_def *o,
                 const char *source, const char *fmt, ...)
{
    va_list ap;
    int n;

    n = snprintf(err, errlen, "--%s: ", o->name);
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    n = (int)strlen(err);
    snprintf(err + n, errlen - (size_t)n, " (from %s)", source);
}

/*
 * A whole number: digits only (strtoull alone would take "-1", " 1" and
 * "+1"), all of them used. 0 ok, -1 not a number, -2 too large for 64 bits.
 */
static int parse_whole(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE)
        return -2;
    *out = v;
    return 0;
}

/*
 * A size in bytes: a whole number with an optional K, M or G (or k, m, g)
 * suffix, powers of 1024. 0 ok, -1 not a size, -2 too large for 64 bits.
 */
static int parse_bytes(const char *s, uint64_t *out)
{
    char digits[32];
    size_t len = strlen(s);
    unsigned shift = 0;
    uint64_t v;
    int rc;

    if (len > 0) {
        switch (s[len - 1]) {
        case 'K': case 'k': shift = 10; break;
        case 'M': case 'm': shift = 20; break;
        case 'G': case 'g': shift = 30; break;
        default: break;
        }
    }
    if (shift != 0)
        len--;
    if (len == 0 || len >= sizeof digits)
        return len == 0 ? -1 : -2;
    memcpy(digits, s, len);
    digits[len] = '\0';
    rc = parse_whole(digits, &v);
    if (rc != 0)
        return rc;
    if (v > (UINT64_MAX >> shift))
        return -2;
    *out = v << shift;
    return 0;
}

/*
 * A number of seconds: starts with a digit or '.', so strtod's "nan",
 * "inf", signs and leading blanks are refused; hex ("0x10") too.
 */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    double v;

    if (!((*s >= '0' && *s <= '9') || *s == '.'))
        return -1;
    if (strpbrk(s, "xX") != NULL)
        return -1;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/*
 * A duration: a number of seconds as parse_seconds takes it, with an
 * optional unit s, m, h or d (one letter, right after it), or "off" for 0.
 */
static int parse_duration(const char *s, double *out)
{
    char digits[64];
    size_t len = strlen(s);
    double unit = 1, v;

    if (strcmp(s, "off") == 0) {
        *out = 0;
        return 0;
    }
    if (len > 0) {
        switch (s[len - 1]) {
        case 's': unit = 1; len--; break;
        case 'm': unit = 60; len--; break;
        case 'h': unit = 3600; len--; break;
        case 'd': unit = 86400; len--; break;
        default: break;
        }
    }
    if (len == 0 || len >= sizeof digits)
        return -1;
    memcpy(digits, s, len);
    digits[len] = '\0';
    if (parse_seconds(digits, &v) != 0)
        return -1;
    *out = v * unit;
    return 0;
}

static int set_listen(config *c, const option_def *o, const char *v,
                      const char *src, char *err, size_t errlen)
{
    char host[sizeof c->listen_host];
    const char *port_text;
    size_t host_len;
    uint64_t port;
    unsigned char addr[sizeof(struct in6_addr)];
    bool bracketed = v[0] == '[';

    if (bracketed) {
        const char *close = strchr(v, ']');
        if (close == NULL || close[1] != ':') {
            fail(err, errlen, o, src,
                 "\"%.100s\" is not [IPv6]:PORT (expected \"]:\" after the address)",
                 v);
            return -1;
        }
        host_len = (size_t)(close - v - 1);
        port_text = close + 2;
        if (host_len >= sizeof host) {
            fail(err, errlen, o, src, "\"%.100s\": the host is too long", v);
            return -1;
        }
        memcpy(host, v + 1, host_len);
    } else {
        const char *colon = strrchr(v, ':');
        if (colon == NULL) {
            fail(err, errlen, o, src, "\"%.100s\" is not HOST:PORT (no port)", v);
            return -1;
        }
        if (memchr(v, ':', (size_t)(colon - v)) != NULL) {
            fail(err, errlen, o, src,
                 "\"%.100s\": an IPv6 address goes in brackets, [::1]:8080", v);
            return -1;
        }
        host_len = (size_t)(colon - v);
        port_text = colon + 1;
        if (host_len >= sizeof host) {
            fail(err, errlen, o, src, "\"%.100s\": the host is too long", v);
            return -1;
        }
        memcpy(host, v, host_len);
    }
    host[host_len] = '\0';

    /* Check here what the HTTP transport can bind, so the error names the option. */
    if (bracketed ? inet_pton(AF_INET6, host, addr) != 1
                  : inet_pton(AF_INET, host, addr) != 1 &&
                        strcmp(host, "localhost") != 0) {
        fail(err, errlen, o, src,
             "\"%.100s\": the host must be a numeric IPv4 address, "
             "[IPv6] in brackets or localhost", v);
        return -1;
    }
    if (parse_whole(port_text, &port) != 0 || port > 65535) {
        fail(err, errlen, o, src,
             "\"%.100s\": the port must be a whole number 0..65535", v);
        return -1;
    }
    memcpy(c->listen_host, host, host_len + 1);
    c->listen_port = (uint16_t)port;
    return 0;
}

/*
 * A token must fit its field and be what a client can send after "Bearer ":
 * visible ASCII only, so a stray blank or an inner newline (a file holding
 * two lines) is caught at start-up instead of as 401s later. file names
 * where the token came from (NULL: the value itself). The messages never
 * include the token.
 */
static int check_token(const char *v, size_t len, size_t field_size,
                       const char *file, const option_def *o, const char *src,
                       char *err, size_t errlen)
{
    char where[320] = "";

    if (file != NULL)
        snprintf(where, sizeof where, " in \"%.300s\"", file);
    if (len == 0) {
        fail(err, errlen, o, src, "the token%s must not be empty", where);
        return -1;
    }
    if (len >= field_size) {
        fail(err, errlen, o, src, "the token%s is longer than %zu bytes", where,
             field_size - 1);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch <= 0x20 || ch >= 0x7f) {
            fail(err, errlen, o, src,
                 "the token%s may hold only visible ASCII characters "
                 "(byte %zu is a blank, control or non-ASCII character)",
                 where, i + 1);
            return -1;
        }
    }
    return 0;
}

/* Writes n zero bytes at p through a volatile pointer, so the store is kept. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *b = p;

    while (n-- > 0)
        *b++ = 0;
}

void config_clear_secrets(config *c)
{
    if (c != NULL)
        wipe(c->token, sizeof c->token);
}

/* Stores d (parsed from v) in the double at field when it is within 0..o->max_seconds. */
static int set_seconds(const option_def *o, const char *v, double d, char *field,
                       const char *src, char *err, size_t errlen)
{
    if (!isfinite(d) || d < 0 || d > o->max_seconds) {
        fail(err, errlen, o, src, "%.100s is out of range 0..%g seconds", v, o->max_seconds);
        return -1;
    }
    *(double *)(void *)field = d;
    return 0;
}

/* Parses v for option o into c; on error fills err and returns -1. */
static int set_value(config *c, const option_def *o, const char *v,
                     const char *src, char *err, size_t errlen)
{
    char *field = (char *)c + o->offset;
    uint64_t n;
    double d;
    int rc;

    switch (o->kind) {
    case OPT_LISTEN:
        return set_listen(c, o, v, src, err, errlen);
    case OPT_PATH:
        if (*v == '\0') {
            fail(err, errlen, o, src, "must not be empty");
            return -1;
        }
        if (strlen(v) >= o->field_size) {
            fail(err, errlen, o, src, "is longer than %zu bytes",
                 o->field_size - 1);
            return -1;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case OPT_SIZE:
    case OPT_UINT:
        rc = parse_whole(v, &n);
        if (rc == -1) {
            fail(err, errlen, o, src, "\"%.100s\" is not a whole number", v);
            return -1;
        }
        if (rc == -2 || n < o->min || n > o->max) {
            fail(err, errlen, o, src, "%.100s is out of range %llu..%llu", v,
                 (unsigned long long)o->min, (unsigned long long)o->max);
            return -1;
        }
        if (o->kind == OPT_SIZE)
            *(size_t *)(void *)field = (size_t)n;
        else
            *(unsigned *)(void *)field = (unsigned)n;
        return 0;
    case OPT_BYTES:
        rc = parse_bytes(v, &n);
        if (rc == -1) {
            fail(err, errlen, o, src,
                 "\"%.100s\" is not a size (a whole number, K, M or G after it)", v);
            return -1;
        }
        if (rc == -2 || n < o->min || n > o->max) {
            fail(err, errlen, o, src, "%.100s is out of range %llu..%llu bytes", v,
                 (unsigned long long)o->min, (unsigned long long)o->max);
            return -1;
        }
        *(size_t *)(void *)field = (size_t)n;
        return 0;
    case OPT_SECONDS:
        if (parse_seconds(v, &d) != 0) {
            fail(err, errlen, o, src, "\"%.100s\" is not a number of seconds", v);
            return -1;
        }
        return set_seconds(o, v, d, field, src, err, errlen);
    case OPT_SYNC:
        if (strcmp(v, "normal") != 0 && strcmp(v, "full") != 0) {
            fail(err, errlen, o, src, "\"%.100s\" is not normal or full", v);
            return -1;
        }
        *(bool *)(void *)field = strcmp(v, "full") == 0;
        return 0;
    case OPT_LEVEL:
        rc = log_level_parse(v);
        if (rc < 0) {
            fail(err, errlen, o, src,
                 "\"%.100s\" is not debug, info, warn or error", v);
            return -1;
        }
        *(int *)(void *)field = rc;
        return 0;
    case OPT_SECRET:
        /* The value is a secret: no message below may quote it. */
        if (check_token(v, strlen(v), o->field_size, NULL, o, src, err, errlen) != 0)
            return -1;
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case OPT_BOOL:
        if (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
            strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0) {
            *(bool *)(void *)field = true;
            return 0;
        }
        if (strcmp(v, "0") == 0 || strcasecmp(v, "false") == 0 ||
            strcasecmp(v, "no") == 0 || strcasecmp(v, "off") == 0) {
            *(bool *)(void *)field = false;
            return 0;
        }
        fail(err, errlen, o, src, "\"%.100s\" is not true or false (or 1, 0)", v);
        return -1;
    case OPT_DURATION:
        if (parse_duration(v, &d) != 0) {
            fail(err, errlen, o, src,
                 "\"%.100s\" is not a duration (a number with s, m, h or d after it, or off)",
                 v);
            return -1;
        }
        return set_seconds(o, v, d, field, src, err, errlen);
    }
    fail(err, errlen, o, src, "has an unknown kind");
    return -1;
}

void config_defaults(config *c)
{
    char err[256];

    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        int rc;

        /* No default: the zeroed field ("" / false) is the unset state. */
        if (options[i].def == NULL)
            continue;
        rc = set_value(c, &options[i], options[i].def, "the defaults", err,
                           sizeof err);
        /* The table's defaults are constants the unit tests parse. */
        assert(rc == 0);
        (void)rc;
    }
}

static const option_def *find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        if (strlen(options[i].name) == len &&
            memcmp(options[i].name, name, len) == 0)
            return &options[i];
    }
    return NULL;
}

static void print_help(FILE *out)
{
    char env[ENV_NAME_MAX];
    char flag[128];
    int w = (int)strlen("--version");

    for (size_t i = 0; i < OPTION_COUNT; i++) {
        int n = snprintf(flag, sizeof flag, "--%s %s", options[i].name,
                         options[i].metavar);
        if (n > w)
            w = n;
    }
    fprintf(out,
            "Usage: nodestate [OPTION]...\n"
            "Keeps the state of every node of every workflow run, over HTTP,\n"
            "in one SQLite file written by a single batching writer.\n"
            "\n"
            "Every option is also an environment variable; a flag beats it.\n"
            "Write \"--name value\" or \"--name=value\".\n"
            "\n");
    fprintf(out, "  %-*s  %-30s  %s\n", w, "OPTION", "ENVIRONMENT", "DEFAULT");
    for (size_t i = 0; i < OPTION_COUNT; i++) {
        snprintf(flag, sizeof flag, "--%s %s", options[i].name,
                 options[i].metavar);
        env_name(&options[i], env);
        /* The token's row shows no default, so help never prints a secret. */
        if (options[i].def != NULL)
            fprintf(out, "  %-*s  %-30s  %s\n      %s\n", w, flag, env,
                    options[i].def, options[i].help);
        else
            fprintf(out, "  %-*s  %s\n      %s\n", w, flag, env, options[i].help);
    }
    fprintf(out, "  --help\n      print this help and exit\n");
    fprintf(out, "  --version\n      print the version and exit\n");
}

/* The index of an option known to be in the table. */
static size_t option_index(const char *name)
{
    const option_def *o = find_option(name, strlen(name));

    assert(o != NULL);
    return (size_t)(o - options);
}

/*
 * Reads the token from c->token_file into c->token: the whole file, with
 * trailing CR/LF stripped (what `echo secret > file` leaves), checked like
 * --token. The copy on the stack is wiped before returning.
 */
static int read_token_file(config *c, const option_def *o, const char *src,
                           char *err, size_t errlen)
{
    /* Room for a full token, its newline and one byte to notice "too long". */
    char buf[sizeof c->token + 3];
    size_t len;
    FILE *f;
    int rc = -1;

    f = fopen(c->token_file, "r");
    if (f == NULL) {
        fail(err, errlen, o, src, "cannot read \"%.300s\": %s", c->token_file,
             strerror(errno));
        return -1;
    }
    len = fread(buf, 1, sizeof buf, f);
    /* A directory opens but fails to read, with EISDIR. */
    if (ferror(f)) {
        fail(err, errlen, o, src, "cannot read \"%.300s\": %s", c->token_file,
             strerror(errno));
        goto out;
    }
    if (len == sizeof buf) {
        fail(err, errlen, o, src, "\"%.300s\" is longer than a token may be "
             "(%zu bytes)", c->token_file, sizeof c->token - 1);
        goto out;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0) {
        fail(err, errlen, o, src, "\"%.300s\" is empty", c->token_file);
        goto out;
    }
    if (memchr(buf, '\0', len) != NULL) {
        fail(err, errlen, o, src, "\"%.300s\" holds a NUL byte", c->token_file);
        goto out;
    }
    if (check_token(buf, len, sizeof c->token, c->token_file, o, src, err,
                    errlen) != 0)
        goto out;
    memcpy(c->token, buf, len);
    c->token[len] = '\0';
    rc = 0;
out:
    wipe(buf, sizeof buf);
    fclose(f);
    return rc;
}

/*
 * After every option is set: --token and --token-file exclude each other
 * (from any source: which one should win is a guess, and a wrong guess is a
 * service that rejects its clients), and a file fills the token.
 */
static int finish_token(config *c, char source[][ENV_NAME_MAX], char *err,
                        size_t errlen)
{
    size_t ti = option_index("token"), fi = option_index("token-file");

    if (source[ti][0] != '\0' && source[fi][0] != '\0') {
        snprintf(err, errlen,
                 "--token and --token-file: give only one of them "
                 "(the token from %s, the file from %s)", source[ti], source[fi]);
        return -1;
    }
    if (source[fi][0] == '\0')
        return 0;
    return read_token_file(c, &options[fi], source[fi], err, errlen);
}

/*
 * --port-file must not name the database or a file beside it that SQLite
 * or the service keeps: the port written over the database destroyed it,
 * and every later write answered durable went nowhere. By name, and by
 * file when both exist (another path to the same file).
 */
static int check_port_file(const config *c, char *err, size_t errlen)
{
    static const char *const beside[] = { "", "-wal", "-shm", "-journal", ".lock", ".spill" };
    const char *p = c->port_file, *db = c->db_path;
    size_t n = strlen(db);
    struct stat ps, ds;

    if (p[0] == '\0')
        return 0;
    bool clash = stat(p, &ps) == 0 && stat(db, &ds) == 0 && ps.st_dev == ds.st_dev &&
                 ps.st_ino == ds.st_ino;
    for (size_t i = 0; !clash && i < sizeof beside / sizeof *beside; i++)
        clash = strncmp(p, db, n) == 0 && strcmp(p + n, beside[i]) == 0;
    if (clash || strcmp(p, c->spill_path) == 0) {
        snprintf(err, errlen, "--port-file %s: that is the database's or its sidecar's file; "
                 "give another path", p);
        return -1;
    }
    return 0;
}

config_outcome config_parse(config *c, int argc, char **argv,
                            char *(*env)(const char *name), FILE *out,
                            char *err, size_t errlen)
{
    /* The flag's value per option (the last one given wins). */
    const char *flag_value[OPTION_COUNT] = {0};
    /* Where each option's value came from, for the messages; "" = nowhere. */
    char source[OPTION_COUNT][ENV_NAME_MAX];
    char scratch[8];
    char envbuf[ENV_NAME_MAX];

    if (err == NULL || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    config_defaults(c);

    /*
     * Read the flags before the environment, so --help and --version work
     * even when a variable holds a bad value, and a variable overridden by a
     * flag is never judged.
     */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *name, *eq, *value;
        const option_def *o;
        size_t len;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            if (out != NULL)
                print_help(out);
            return CONFIG_EXIT_OK;
        }
        if (strcmp(arg, "--version") == 0) {
            if (out != NULL)
                fprintf(out, "nodestate %s\n", NODESTATE_VERSION);
            return CONFIG_EXIT_OK;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen,
                     "unexpected argument \"%.100s\" (options start with --; see --help)",
                     arg);
            return CONFIG_ERROR;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        o = find_option(name, len);
        if (o == NULL) {
            snprintf(err, errlen, "unknown option \"--%.*s\" (see --help)",
                     (int)(len > 100 ? 100 : len), name);
            return CONFIG_ERROR;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (o->kind == OPT_BOOL) {
            /* An on/off flag alone turns it on and takes no argument. */
            value = "true";
        } else {
            /* "--db --batch-size 5" is a forgotten value, not a path. */
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
                fail(err, errlen, o, "the command line",
                     "needs a value, as in --%s %s", o->name, o->metavar);
                return CONFIG_ERROR;
            }
            value = argv[++i];
        }
        flag_value[o - options] = value;
    }

    for (size_t i = 0; i < OPTION_COUNT; i++) {
        const char *value = flag_value[i];
        const char *src = "the command line";

        source[i][0] = '\0';
        if (value == NULL && env != NULL) {
            env_name(&options[i], envbuf);
            value = env(envbuf);
            src = envbuf;
            /* An empty variable (as compose files often pass) means unset. */
            if (value != NULL && *value == '\0')
                value = NULL;
        }
        if (value == NULL)
            continue;
        if (set_value(c, &options[i], value, src, err, errlen) != 0)
            return CONFIG_ERROR;
        snprintf(source[i], sizeof source[i], "%s", src);
    }
    if (check_port_file(c, err, errlen) != 0)
        return CONFIG_ERROR;
    return finish_token(c, source, err, errlen) == 0 ? CONFIG_RUN : CONFIG_ERROR;
}

/* The value of option o in c, as a user would write it. */
static void format_value(const config *c, const option_def *o, char *buf,
                         size_t size)
{
    const char *field = (const char *)c + o->offset;

    switch (o->kind) {
    case OPT_LISTEN:
        if (strchr(c->listen_host, ':') != NULL)
            snprintf(buf, size, "[%s]:%u", c->listen_host,
                     (unsigned)c->listen_port);
        else
            snprintf(buf, size, "%s:%u", c->listen_host,
                     (unsigned)c->listen_port);
        return;
    case OPT_PATH:
        snprintf(buf, size, "%s", field);
        return;
    case OPT_SIZE:
    case OPT_BYTES:
        snprintf(buf, size, "%zu", *(const size_t *)(const void *)field);
        return;
    case OPT_UINT:
        snprintf(buf, size, "%u", *(const unsigned *)(const void *)field);
        return;
    case OPT_SECONDS:
        snprintf(buf, size, "%g", *(const double *)(const void *)field);
        return;
    case OPT_SYNC:
        snprintf(buf, size, "%s",
                 *(const bool *)(const void *)field ? "full" : "normal");
        return;
    case OPT_LEVEL:
        snprintf(buf, size, "%s",
                 log_level_name(*(const int *)(const void *)field));
        return;
    case OPT_SECRET:
        snprintf(buf, size, "%s", *field != '\0' ? "set" : "unset");
        return;
    case OPT_BOOL:
        snprintf(buf, size, "%s",
                 *(const bool *)(const void *)field ? "true" : "false");
        return;
    case OPT_DURATION:
        snprintf(buf, size, "%gs", *(const double *)(const void *)field);
        return;
    }
    snprintf(buf, size, "?");
}

const char *config_format(const config *c, char *buf, size_t size)
{
    /* A value is at most a path (4 KiB) and, escaped, six bytes per byte. */
    char value[sizeof c->db_path + 64];
    char quoted[sizeof value * 6 + 3];
    size_t len = 0;

    if (buf == NULL || size == 0)
        return buf;
    buf[0] = '\0';
    for (size_t i = 0; i < OPTION_COUNT && len + 1 < size; i++) {
        const char *name = options[i].name;
        int n;

        format_value(c, &options[i], value, sizeof value);
        logfmt_quote(quoted, sizeof quoted, value);
        /* An unset path reads better as "" than as nothing after '='. */
        if (value[0] == '\0')
            snprintf(quoted, sizeof quoted, "\"\"");
        n = snprintf(buf + len, size - len, "%s", i > 0 ? " " : "");
        if (n < 0 || (size_t)n >= size - len)
            break;
        len += (size_t)n;
        /* Keys are the option names with '_' for '-', as logfmt keys go. */
        for (const char *p = name; *p && len + 1 < size; p++)
            buf[len++] = *p == '-' ? '_' : *p;
        buf[len] = '\0';
        n = snprintf(buf + len, size - len, "=%s", quoted);
        if (n < 0 || (size_t)n >= size - len) {
            len = size - 1;
            break;
        }
        len += (size_t)n;
    }
    return buf;
}
