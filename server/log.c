#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "logfmt.h"
#include "model.h"

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
/* Longest msg kept, quoted (msgs are short event names). */
#define LOG_MSG_MAX 256

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

static size_t escaped_len(const char *s, bool quoted)
{
    size_t n = 0;
    char esc[7];

    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += logfmt_escape(*p, quoted, esc);
    return n;
}

/* Appends s escaped at dst (room known to suffice); returns the new end. */
static char *escape_into(char *dst, const char *s, bool quoted)
{
    char esc[7];

    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        size_t n = logfmt_escape(*p, quoted, esc);
        memcpy(dst, esc, n);
        dst += n;
    }
    return dst;
}

/* "2026-11-26T16:27:29.123Z" for now. */
static void format_now(char buf[NS_TS_BUF])
{
    model_ts_format(model_now_ms(), buf);
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
    char ts[NS_TS_BUF];
    char m[LOG_MSG_MAX];
    const char *lv;
    size_t total;
    char *line, *p;

    if (l == NULL || level < l->min_level)
        return;
    if (fields == NULL)
        fields = "";
    format_now(ts);
    lv = log_level_name(level);
    logfmt_quote(m, sizeof m, msg);

    total = strlen("ts=") + strlen(ts) + strlen(" level=") + strlen(lv) +
            strlen(" msg=") + strlen(m) +
            (*fields ? 1 + escaped_len(fields, false) : 0) + 1;
    line = total <= sizeof stack ? stack : malloc(total);
    if (line == NULL) {
        /* Out of memory: still say what happened, without the fields. */
        int n = snprintf(stack, sizeof stack,
                         "ts=%s level=%s msg=%s log_truncated=true\n", ts, lv, m);
        if (n > 0)
            emit(l, stack, (size_t)n < sizeof stack ? (size_t)n : sizeof stack - 1);
        return;
    }

    p = line;
    p += sprintf(p, "ts=%s level=%s msg=%s", ts, lv, m);
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
