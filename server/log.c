#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct logger {
    FILE *out;             /* not owned: log_free leaves it open */
    int min_level;         /* lines below this level are dropped */
    pthread_mutex_t lock;  /* guards writes to out, so lines never interleave */
};

/* Indexed by NS_LOG_*. */
static const char *const level_names[] = {"debug", "info", "warn", "error"};
#define LEVEL_COUNT (sizeof level_names / sizeof level_names[0])

/* Lines up to this size are built on the stack; longer ones are malloc'd. */
#define LINE_STACK 1024

logger *log_new(FILE *out, int min_level)
{
    logger *l;

    if (out == NULL)
        return NULL;
    l = malloc(sizeof *l);
    if (l == NULL)
        return NULL;
    l->out = out;
    l->min_level = min_level;
    if (pthread_mutex_init(&l->lock, NULL) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

void log_free(logger *l)
{
    if (l == NULL)
        return;
    pthread_mutex_destroy(&l->lock);
    free(l);
}

int log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < LEVEL_COUNT; i++) {
        if (strcmp(name, level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

const char *log_level_name(int level)
{
    if (level < 0 || (size_t)level >= LEVEL_COUNT)
        return "unknown";
    return level_names[level];
}

static bool is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/*
 * logfmt needs quotes around a value holding a space, '=' or '"'. A control
 * character (a newline above all) would split the line, so it is escaped and
 * therefore quoted too.
 */
static bool needs_quotes(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == ' ' || *p == '=' || *p == '"' || is_control(*p))
            return true;
    }
    return false;
}

/*
 * The escape for c, written into esc (at least 7 bytes, NUL-terminated);
 * returns its length. Outside quotes only control characters are escaped:
 * fields arrive as logfmt already, with the caller's own quoting.
 */
static size_t escape_char(unsigned char c, bool quoted, char esc[7])
{
    if (c == '\n')
        return (size_t)snprintf(esc, 7, "\\n");
    if (c == '\r')
        return (size_t)snprintf(esc, 7, "\\r");
    if (c == '\t')
        return (size_t)snprintf(esc, 7, "\\t");
    if (is_control(c))
        return (size_t)snprintf(esc, 7, "\\u%04x", (unsigned)c);
    if (quoted && (c == '"' || c == '\\'))
        return (size_t)snprintf(esc, 7, "\\%c", c);
    esc[0] = (char)c;
    esc[1] = '\0';
    return 1;
}

static size_t escaped_len(const char *s, bool quoted)
{
    size_t n = 0;
    char esc[7];

    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += escape_char(*p, quoted, esc);
    return n;
}

/* Appends s escaped at dst (room known to suffice); returns the new end. */
static char *escape_into(char *dst, const char *s, bool quoted)
{
    char esc[7];

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        size_t n = escape_char(*p, quoted, esc);
        memcpy(dst, esc, n);
        dst += n;
    }
    return dst;
}

const char *log_quote(char *buf, size_t size, const char *value)
{
    size_t len = 0;
    char esc[7];

    if (buf == NULL || size == 0)
        return buf;
    if (value == NULL)
        value = "";
    if (!needs_quotes(value)) {
        snprintf(buf, size, "%s", value);
        return buf;
    }
    if (size < 3) {  /* no room even for "" */
        buf[0] = '\0';
        return buf;
    }
    buf[len++] = '"';
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        size_t n = escape_char(*p, true, esc);
        /* Keep room for the closing quote and the NUL. */
        if (len + n + 2 > size)
            break;
        memcpy(buf + len, esc, n);
        len += n;
    }
    buf[len++] = '"';
    buf[len] = '\0';
    return buf;
}

/* "2026-11-26T16:27:29.123Z" for now; buf holds at least 64 bytes. */
static void format_now(char *buf, size_t size)
{
    struct timespec ts;
    struct tm tm;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 ||
        gmtime_r(&ts.tv_sec, &tm) == NULL) {
        /* A line with a fixed stamp beats losing the line. */
        snprintf(buf, size, "1970-01-01T00:00:00.000Z");
        return;
    }
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (long)(ts.tv_nsec / 1000000));
}

static void emit(logger *l, const char *line, size_t len)
{
    pthread_mutex_lock(&l->lock);
    /* A log line that cannot be written has nowhere else to go: ignore. */
    (void)fwrite(line, 1, len, l->out);
    fflush(l->out);
    pthread_mutex_unlock(&l->lock);
}

void log_write(void *ctx, int level, const char *msg, const char *fields)
{
    logger *l = ctx;
    char stack[LINE_STACK];
    char ts[64];
    const char *lv;
    bool quoted;
    size_t total;
    char *line, *p;

    if (l == NULL || level < l->min_level)
        return;
    if (msg == NULL)
        msg = "";
    if (fields == NULL)
        fields = "";
    format_now(ts, sizeof ts);
    lv = log_level_name(level);
    quoted = needs_quotes(msg);

    total = strlen("ts=") + strlen(ts) + strlen(" level=") + strlen(lv) +
            strlen(" msg=") + escaped_len(msg, quoted) + (quoted ? 2 : 0) +
            (*fields ? 1 + escaped_len(fields, false) : 0) + 1;
    line = total <= sizeof stack ? stack : malloc(total);
    if (line == NULL) {
        /* Out of memory: still say what happened, with the msg cut short. */
        char m[256];
        int n = snprintf(stack, sizeof stack,
                         "ts=%s level=%s msg=%s log_truncated=true\n", ts, lv,
                         log_quote(m, sizeof m, msg));
        if (n > 0)
            emit(l, stack, (size_t)n < sizeof stack ? (size_t)n : sizeof stack - 1);
        return;
    }

    p = line;
    p += sprintf(p, "ts=%s level=%s msg=", ts, lv);
    if (quoted)
        *p++ = '"';
    p = escape_into(p, msg, quoted);
    if (quoted)
        *p++ = '"';
    if (*fields) {
        *p++ = ' ';
        p = escape_into(p, fields, false);
    }
    *p++ = '\n';
    emit(l, line, (size_t)(p - line));
    if (line != stack)
        free(line);
}

void log_printf(logger *l, int level, const char *msg, const char *fmt, ...)
{
    char stack[LINE_STACK];
    char *fields = stack;
    va_list ap;
    int n;

    /* Skip the formatting for lines that would be dropped anyway. */
    if (l == NULL || level < l->min_level)
        return;
    va_start(ap, fmt);
    n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n < 0) {
        log_write(l, level, msg, "log_format_error=true");
        return;
    }
    if ((size_t)n >= sizeof stack) {
        fields = malloc((size_t)n + 1);
        if (fields == NULL) {
            /* Out of memory: log what fit on the stack. */
            log_write(l, level, msg, stack);
            return;
        }
        va_start(ap, fmt);
        vsnprintf(fields, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    log_write(l, level, msg, fields);
    if (fields != stack)
        free(fields);
}
