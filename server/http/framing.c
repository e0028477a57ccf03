#include "framing.h"

#include <string.h>

/* ASCII only: locale-independent, and no surprises on bytes >= 0x80. */
static bool framing_name_is(const char *name, size_t len, const char *want)
{
    size_t i;

    if (len != strlen(want))
        return false;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (c != (unsigned char)want[i])
            return false;
    }
    return true;
}

/* Whether name is a token (RFC 9110 5.6.2): no blank, colon or control byte in it. */
static bool framing_token(const char *name, size_t len)
{
    static const char other[] = "!#$%&'*+-.^_`|~";

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];

        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c != '\0' && strchr(other, c) != NULL)))
            return false;
    }
    return true;
}

/* Whether name begins with want (lower case) and goes on. */
static bool framing_name_runs_on(const char *name, size_t len, const char *want)
{
    size_t n = strlen(want);

    return len > n && framing_name_is(name, n, want);
}

/* 1*DIGIT into *out; false when empty, not digits, or above UINT64_MAX. */
static bool framing_parse_length(const char *v, size_t len, uint64_t *out)
{
    uint64_t n = 0;
    size_t i;

    if (len == 0)
        return false;
    for (i = 0; i < len; i++) {
        unsigned d;

        if (v[i] < '0' || v[i] > '9')
            return false;
        d = (unsigned)(v[i] - '0');
        if (n > (UINT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
    }
    *out = n;
    return true;
}

void framing_init(framing_state *st)
{
    memset(st, 0, sizeof *st);
}

void framing_add(framing_state *st, const char *name, size_t name_len,
                 const char *value, size_t value_len)
{
    if (name == NULL)
        return;
    if (value == NULL)
        value_len = 0;
    /*
     * A CR, LF or NUL in a value: a bare CR ends the line for some parsers
     * (a proxy in front) and not for MHD, which would read "X: y\rContent-
     * Length: 5" as one field and the body as the next request.
     */
    if (value_len > 0 && (memchr(value, '\r', value_len) != NULL ||
                          memchr(value, '\n', value_len) != NULL ||
                          memchr(value, '\0', value_len) != NULL))
        st->field_malformed = true;
    if (!framing_token(name, name_len) || framing_name_runs_on(name, name_len, "content-length") ||
        framing_name_runs_on(name, name_len, "transfer-encoding")) {
        st->field_malformed = true;
        return;
    }

    if (framing_name_is(name, name_len, "content-length")) {
        uint64_t n;

        if (!framing_parse_length(value, value_len, &n))
            st->length_malformed = true;
        else if (!st->has_length) {
            st->has_length = true;
            st->length = n;
        } else if (n != st->length) {
            st->length_conflict = true;
        }
        return;
    }
    if (framing_name_is(name, name_len, "transfer-encoding")) {
        if (st->codings < 2)
            st->codings++;
        /* Anything but one lone "chunked" (a list, another coding, chunked
         * twice) leaves the body's end to a decoder we do not have. */
        st->coding_chunked = st->codings == 1 &&
                             framing_name_is(value, value_len, "chunked");
    }
}

framing_verdict framing_verdict_of(const framing_state *st)
{
    if (st->length_malformed)
        return FRAMING_LENGTH_MALFORMED;
    if (st->field_malformed)
        return FRAMING_FIELD_MALFORMED;
    if (st->length_conflict)
        return FRAMING_LENGTH_CONFLICT;
    if (st->codings > 0 && st->has_length)
        return FRAMING_LENGTH_AND_CODING;
    if (st->codings > 0 && !st->coding_chunked)
        return FRAMING_CODING_UNSUPPORTED;
    return FRAMING_OK;
}

framing_verdict framing_check(const framing_header *fields, size_t n)
{
    framing_state st;
    size_t i;

    framing_init(&st);
    for (i = 0; i < n; i++)
        framing_add(&st, fields[i].name, fields[i].name_len, fields[i].value,
                    fields[i].value_len);
    return framing_verdict_of(&st);
}

const char *framing_detail(framing_verdict v)
{
    switch (v) {
    case FRAMING_OK:
        return "";
    case FRAMING_LENGTH_MALFORMED:
        return "Content-Length must be a number of bytes (digits only, at most 2^64-1)";
    case FRAMING_FIELD_MALFORMED:
        return "a header field's name must be a token right before its colon, on one line "
               "(no blank before the colon, no folded line), and its value without a CR";
    case FRAMING_LENGTH_CONFLICT:
        return "the request has Content-Length fields with different values";
    case FRAMING_LENGTH_AND_CODING:
        return "the request has both Content-Length and Transfer-Encoding";
    case FRAMING_CODING_UNSUPPORTED:
        return "Transfer-Encoding must be a single \"chunked\"";
    }
    return "the request's body length is ambiguous";
}
