/*
 * utf8: where a UTF-8 character ends, for every layer that must keep bytes
 * from outside valid UTF-8 (the api's answers, the log's lines) and cut
 * them only between characters.
 */
#ifndef NODESTATE_UTF8_H
#define NODESTATE_UTF8_H

#include <stddef.h>

/*
 * The length (1-4) of the valid UTF-8 character at s, of at most len bytes,
 * or 0 when none starts there. Valid as RFC 3629 says: shortest form only, no
 * surrogates, nothing above U+10FFFF.
 */
size_t utf8_char_len(const char *s, size_t len);

#endif
