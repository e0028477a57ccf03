#include "logfmt.h"

#include <stdio.h>
#include <string.h>

#include "utf8.h"

static bool is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/*
 * logfmt needs quotes around a value holding a space, '=' or '"'. A control
 * character (a newline above all) would split the line, and a byte that is
 * no part of a UTF-8 character would make the line no text (a client's
 * path, say), so both are escaped and therefore quoted too.
 */
static bool needs_quotes(const char *s)
{
    size_t left = strlen(s), n;
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n, left -= n) {
        n = utf8_char_len((const char *)p, left);
        if (n == 0 || *p == ' ' || *p == '=' || *p == '"' || is_control(*p))
            return true;
    }
    return false;
}

size_t logfmt_escape(unsigned char c, bool quoted, char esc[7])
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

/*
 * The unit of value at p (left bytes to its end): a whole UTF-8 character
 * as it is, or one byte escaped. Its text goes to esc (returned length),
 * the bytes it covers to *in.
 */
static size_t logfmt_unit(const unsigned char *p, size_t left, bool quoted, char esc[7],
                          size_t *in)
{
    size_t n = is_control(*p) ? 1 : utf8_char_len((const char *)p, left);
    *in = n ? n : 1;
    if (n > 1) {
        memcpy(esc, p, n);
        esc[n] = '\0';
        return n;
    }
    if (n == 0)
        return (size_t)snprintf(esc, 7, "\\x%02x", (unsigned)*p);
    return logfmt_escape(*p, quoted, esc);
}

const char *logfmt_quote(char *buf, size_t size, const char *value)
{
    size_t len = 0, left, in;
    char esc[7];

    if (buf == NULL || size == 0)
        return buf;
    if (value == NULL)
        value = "";
    bool quoted = needs_quotes(value);
    if (quoted && size < 3) { /* no room even for "" */
        buf[0] = '\0';
        return buf;
    }
    /* Room kept for the closing quote (when quoted) and the NUL. */
    size_t keep = quoted ? 2 : 1;
    if (quoted)
        buf[len++] = '"';
    left = strlen(value);
    for (const unsigned char *p = (const unsigned char *)value; *p; p += in, left -= in) {
        size_t n = logfmt_unit(p, left, quoted, esc, &in);
        /* Cut between characters, never inside one or inside an escape. */
        if (len + n + keep > size)
            break;
        memcpy(buf + len, esc, n);
        len += n;
    }
    if (quoted)
        buf[len++] = '"';
    buf[len] = '\0';
    return buf;
}
