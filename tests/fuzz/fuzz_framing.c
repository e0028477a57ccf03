/*
 * fuzz_framing: libFuzzer target for server/http/framing. The input is a header
 * block, one "Name: value" field per line (LF or CRLF); a line without a
 * colon is a name with no value. Whatever the bytes, framing_check must
 * return one of its verdicts, read nothing outside the fields it is given,
 * and agree with feeding the same fields one at a time.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "framing.h"

/* Bounded like MHD's header memory: a few thousand fields at most. */
#define FUZZ_MAX_FIELDS 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    framing_header fields[FUZZ_MAX_FIELDS];
    framing_state st;
    framing_verdict whole, step;
    const char *p = (const char *)data;
    const char *end = p + size;
    size_t n = 0;

    while (p < end && n < FUZZ_MAX_FIELDS) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol != NULL ? eol : end;
        const char *colon;
        size_t len;

        len = (size_t)(line_end - p);
        if (len > 0 && p[len - 1] == '\r')
            len--;
        colon = memchr(p, ':', len);
        if (colon != NULL) {
            fields[n].name = p;
            fields[n].name_len = (size_t)(colon - p);
            fields[n].value = colon + 1;
            fields[n].value_len = len - (size_t)(colon + 1 - p);
        } else {
            fields[n].name = p;
            fields[n].name_len = len;
            fields[n].value = NULL;
            fields[n].value_len = 0;
        }
        n++;
        p = eol != NULL ? eol + 1 : end;
    }

    whole = framing_check(fields, n);
    framing_init(&st);
    for (size_t i = 0; i < n; i++)
        framing_add(&st, fields[i].name, fields[i].name_len, fields[i].value,
                    fields[i].value_len);
    step = framing_verdict_of(&st);
    if (whole != step || whole < FRAMING_OK || whole > FRAMING_CODING_UNSUPPORTED)
        abort();
    if (framing_detail(whole) == NULL)
        abort();
    return 0;
}
