#include "text.h"

#include <stdbool.h>
#include <string.h>

#include "utf8.h"

/* Bytes an escaped byte takes: \xHH. */
#define TEXT_ESCAPE_LEN 4
#define TEXT_ELLIPSIS "..."
#define TEXT_ELLIPSIS_LEN 3

static bool text_is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/*
 * The unit at s: how many input bytes it covers (*in) and how many output
 * bytes it becomes (returned).
 */
static size_t text_unit(const unsigned char *s, size_t len, size_t *in)
{
    size_t n = text_is_control(s[0]) ? 0 : utf8_char_len((const char *)s, len);

    if (n == 0) {
        *in = 1;
        return TEXT_ESCAPE_LEN;
    }
    *in = n;
    return n;
}

size_t text_safe(char *out, size_t size, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *u = (const unsigned char *)s;
    size_t room, need = 0, in, w = 0;
    bool cut;

    if (size == 0)
        return 0;
    room = size - 1;
    for (size_t i = 0; i < len && need <= room; i += in)
        need += text_unit(u + i, len - i, &in);
    cut = need > room;
    /* The mark goes in when there is room for it; a tinier out is just cut. */
    bool mark = cut && room >= TEXT_ELLIPSIS_LEN;
    if (mark)
        room -= TEXT_ELLIPSIS_LEN;
    for (size_t i = 0; i < len; i += in) {
        size_t n = text_unit(u + i, len - i, &in);

        if (w + n > room)
            break;
        if (in == 1 && n == TEXT_ESCAPE_LEN) {
            out[w] = '\\';
            out[w + 1] = 'x';
            out[w + 2] = hex[u[i] >> 4];
            out[w + 3] = hex[u[i] & 0xf];
        } else {
            memcpy(out + w, s + i, n);
        }
        w += n;
    }
    if (mark) {
        memcpy(out + w, TEXT_ELLIPSIS, TEXT_ELLIPSIS_LEN);
        w += TEXT_ELLIPSIS_LEN;
    }
    out[w] = '\0';
    return w;
}

int text_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

text_decode_result text_query_decode(char *out, size_t size, const char *s,
                                     size_t *out_len)
{
    size_t w = 0;

    if (out_len != NULL)
        *out_len = 0;
    if (size == 0)
        return TEXT_TOO_LONG;
    out[0] = '\0';
    for (const char *p = s; *p != '\0'; p++) {
        char c = *p;

        if (c == '%') {
            int hi = text_hex_digit(p[1]);
            int lo = hi >= 0 ? text_hex_digit(p[2]) : -1;

            if (lo < 0 || (hi == 0 && lo == 0)) {
                out[0] = '\0';
                return TEXT_BAD_ESCAPE;
            }
            c = (char)(hi << 4 | lo);
            p += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (w + 1 >= size) {
            out[0] = '\0';
            return TEXT_TOO_LONG;
        }
        out[w++] = c;
    }
    out[w] = '\0';
    if (out_len != NULL)
        *out_len = w;
    return TEXT_DECODED;
}
