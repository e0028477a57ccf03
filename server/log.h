/*
 * log: one logfmt line per event on a stream (stderr in the service):
 *   ts=2026-11-26T16:27:29.123Z level=info msg=listening addr=127.0.0.1:8080
 * A logger is a value passed to whoever logs (no global state); log_write
 * matches ns_log_fn so the engine and the api can be handed it as a callback.
 */
#ifndef NODESTATE_LOG_H
#define NODESTATE_LOG_H

#include <stddef.h>
#include <stdio.h>

#include "loglevel.h" /* ns_log_fn, NS_LOG_*: log_write is one */
#include "logfmt.h" /* logfmt_quote, for the values of fields */

typedef struct logger logger;

/* A logger writing lines at or above min_level to out; NULL when out of memory. */
logger *log_new(FILE *out, int min_level);
void log_free(logger *l);
/* Parses "debug", "info", "warn", "error"; -1 for anything else. */
int log_level_parse(const char *name);
const char *log_level_name(int level);
/* ns_log_fn: ctx is a logger. Writes one whole line atomically. */
void log_write(void *ctx, int level, const char *msg, const char *fields);
/* printf-style convenience: log_printf(l, NS_LOG_INFO, "listening", "addr=%s", a). */
void log_printf(logger *l, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
