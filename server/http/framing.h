/*
 * framing: decides from a request's header fields whether its body is
 * delimited one way only (RFC 9112 §6). Two parsers that disagree on where a
 * body ends (a proxy taking the first of two Content-Lengths, the server the
 * second; one honouring Transfer-Encoding, the other Content-Length) let a
 * client smuggle a second request inside the first, so anything ambiguous is
 * refused rather than resolved. So is a field name that is not a token (a
 * blank before its colon: "Content-Length : 5" is no Content-Length to MHD,
 * but is one to a lenient proxy), and a framing field's name with more after
 * it: MHD 0.9.75 glues a folded continuation line onto the field's name
 * ("Content-Length: 5" then " 0" arrives as "Content-Length0"), and a value
 * holding a CR (a line's end to some parsers, not to MHD). Pure: no MHD, no
 * allocation; the transport feeds it the fields as it iterates them.
 */
#ifndef NODESTATE_FRAMING_H
#define NODESTATE_FRAMING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What is wrong with a request's framing; the order is the precedence. */
typedef enum framing_verdict {
    FRAMING_OK = 0,
    FRAMING_LENGTH_MALFORMED,   /* a Content-Length not 1*DIGIT, or above 2^64-1 */
    FRAMING_FIELD_MALFORMED,    /* a name not a token, a framing name run on, a CR/LF/NUL value */
    FRAMING_LENGTH_CONFLICT,    /* Content-Length fields with different values */
    FRAMING_LENGTH_AND_CODING,  /* Content-Length together with Transfer-Encoding */
    FRAMING_CODING_UNSUPPORTED  /* Transfer-Encoding other than one "chunked" */
} framing_verdict;

/* The fields seen so far; framing_init it, then framing_add each field. */
typedef struct framing_state {
    bool has_length;
    uint64_t length;            /* the first valid Content-Length */
    bool length_malformed;
    bool field_malformed;
    bool length_conflict;
    unsigned codings;           /* Transfer-Encoding fields, saturating */
    bool coding_chunked;        /* the (only) Transfer-Encoding is "chunked" */
} framing_state;

/* One header field; value need not be NUL-terminated. */
typedef struct framing_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} framing_header;

void framing_init(framing_state *st);
/*
 * One field; names compare without case. Values are taken as they are: the
 * transport's parser drops the blanks before a value, and MHD 0.9.75 keeps
 * those after it and then refuses "20 " as a length, or takes "chunked " for
 * an unknown coding; so a blank is not trimmed here either.
 */
void framing_add(framing_state *st, const char *name, size_t name_len,
                 const char *value, size_t value_len);
framing_verdict framing_verdict_of(const framing_state *st);
/* framing_init, framing_add of each of the n fields, framing_verdict_of. */
framing_verdict framing_check(const framing_header *fields, size_t n);
/* A sentence for a problem's detail; "" for FRAMING_OK. */
const char *framing_detail(framing_verdict v);

#endif
