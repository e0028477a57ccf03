/*
 * utf8_check: whether bytes are valid UTF-8 (RFC 3629: shortest forms only,
 * no surrogates, nothing above U+10FFFF), written apart from api/text.c so
 * that tests of answers do not trust the code they check. Header-only; each
 * test that needs it includes it once.
 */
#ifndef NODESTATE_UTF8_CHECK_H
#define NODESTATE_UTF8_CHECK_H

#include <stdbool.h>
#include <stddef.h>

static inline bool utf8_check(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end = p + len;
    while (p < end) {
        int more = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
                   : (*p & 0xf8) == 0xf0 ? 3 : -1;
        if (more < 0 || end - p <= more)
            return false;   /* not a lead byte, or cut short */
        unsigned cp = more == 0 ? *p : *p & (0x3fu >> more);
        p++;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (*p & 0x3fu);
        }
        unsigned min = more == 0 ? 0 : more == 1 ? 0x80 : more == 2 ? 0x800 : 0x10000;
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
    }
    return true;
}

#endif
