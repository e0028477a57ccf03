#include "buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"
#include "utf8.h"

/*
 * First allocation: big enough for a typical node state object (about 400
 * bytes with its timestamps), so that an answer is one malloc, no realloc.
 */
#define BUF_MIN_CAP 512

void buf_init(buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->failed = false;
}

void buf_free(buf *b)
{
    free(b->data);
    buf_init(b);
}

/*
 * Makes room for n more bytes plus the terminating NUL. Returns false (and
 * marks the buffer failed) when that cannot be had, so callers just stop.
 */
static bool buf_reserve(buf *b, size_t n)
{
    if (b->failed)
        return false;
    if (n > SIZE_MAX - 1 - b->len) {
        b->failed = true;
        return false;
    }
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : BUF_MIN_CAP;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    /* Keep the old block on failure: buf_free must still release it. */
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void buf_append(buf *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    if (n > 0)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    va_list ap;
    /* Try the room we have first; most calls fit and format only once. */
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n >= room) {
        if (!buf_reserve(b, (size_t)n))
            return;
        va_start(ap, fmt);
        n = vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
    }
    b->len += (size_t)n;
}

void buf_json_string(buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    if (s == NULL) {
        buf_append(b, "null", 4);
        return;
    }
    buf_append(b, "\"", 1);
    /* Copy runs of bytes that need no escape in one append. */
    const char *run = s;
    const char *end = s + strlen(s);
    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        char esc[6];
        size_t elen = 2;
        esc[0] = '\\';
        if (c >= 0x80) {
            /*
             * A JSON text must be UTF-8 (RFC 8259); a byte that is not part
             * of a valid character (a row another program wrote, a cut
             * somewhere upstream) becomes U+FFFD rather than breaking it.
             */
            size_t n = utf8_char_len(p, (size_t)(end - p));
            if (n > 0) {
                p += n - 1;
                continue;
            }
            buf_append(b, run, (size_t)(p - run));
            buf_append(b, "\\ufffd", 6);
            run = p + 1;
            continue;
        }
        switch (c) {
        case '"':  esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (c >= 0x20)
                continue;   /* printable ASCII passes through */
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            elen = 6;
            break;
        }
        buf_append(b, run, (size_t)(p - run));
        buf_append(b, esc, elen);
        run = p + 1;
    }
    buf_puts(b, run);
    buf_append(b, "\"", 1);
}

char *buf_steal(buf *b, size_t *len)
{
    /* An empty buffer still hands out a valid empty string. */
    if (b->data == NULL)
        buf_append(b, "", 0);
    if (b->failed) {
        buf_free(b);
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    char *data = b->data;
    if (len != NULL)
        *len = b->len;
    buf_init(b);
    return data;
}
