#include "logfmt.h"

#include <stdio.h>
#include <string.h>

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

const char *logfmt_quote(char *buf, size_t size, const char *value)
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
    if (size < 3) { /* no room even for "" */
        buf[0] = '\0';
        return buf;
    }
    buf[len++] = '"';
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        size_t n = logfmt_escape(*p, true, esc);
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
