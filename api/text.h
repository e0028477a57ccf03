/*
 * text: bytes that came from a client, made safe to use. Error details echo
 * client bytes (a method, a member name); an answer must stay valid UTF-8
 * whatever those bytes are, and a detail cut to fit must not end inside a
 * character. Query values reach the api still percent-encoded (the transport
 * leaves the URL as sent, so that an encoded NUL or '/' can never shorten an
 * id or change the route); the api decodes each value it reads here.
 */
#ifndef NODESTATE_TEXT_H
#define NODESTATE_TEXT_H

#include <stddef.h>

/*
 * Copies s (len bytes, NULs allowed) into out as text safe to show: valid
 * UTF-8 characters are kept, and every control character (below 0x20, 0x7f)
 * and every byte that is not part of a valid UTF-8 character becomes the four
 * characters \xHH. What does not fit in size - 1 bytes is cut at a whole
 * character (never inside one or inside an escape) and marked with "...".
 * out is always NUL-terminated when size > 0. Returns strlen(out). A second
 * pass with room enough changes nothing, so a detail built from pieces made
 * safe may be made safe again as a whole.
 */
size_t text_safe(char *out, size_t size, const char *s, size_t len);

/* The value of a hex digit (either case), or -1 for any other byte. */
int text_hex_digit(char c);

/* Why text_query_decode refused a value. */
typedef enum text_decode_result {
    TEXT_DECODED = 0,
    TEXT_BAD_ESCAPE = -1,   /* '%' without two hex digits, or %00 */
    TEXT_TOO_LONG = -2      /* the decoded value does not fit */
} text_decode_result;

/*
 * Decodes one query value the way forms encode it: %HH is the byte 0xHH and
 * '+' is a space (what the transport always did). A value holding a NUL
 * (%00) is refused: nothing after it could be seen. out gets the value,
 * NUL-terminated, in at most size bytes; *out_len (may be NULL) its length.
 */
text_decode_result text_query_decode(char *out, size_t size, const char *s,
                                     size_t *out_len);

#endif
