/*
 * buf: a growable byte buffer for building response bodies. Appends never
 * fail loudly: on out-of-memory the buffer remembers the failure (failed) and
 * ignores further appends, so callers check once at the end.
 */
#ifndef NODESTATE_BUF_H
#define NODESTATE_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct buf {
    char *data;     /* NUL-terminated when len > 0 */
    size_t len;
    size_t cap;
    bool failed;    /* an allocation failed; contents are incomplete */
} buf;

void buf_init(buf *b);
void buf_free(buf *b);
void buf_append(buf *b, const char *s, size_t n);
void buf_puts(buf *b, const char *s);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * Appends s as a JSON string literal, quotes included; NULL appends null.
 * Well-formed UTF-8 is copied; any byte that is not part of it becomes
 * U+FFFD, so the result is valid JSON whatever bytes s holds.
 */
void buf_json_string(buf *b, const char *s);
/* Hands the bytes to the caller (free with free) and resets b; NULL if failed. */
char *buf_steal(buf *b, size_t *len);

#endif
