#include "doc_table.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NODESTATE_SOURCE_DIR
#error "NODESTATE_SOURCE_DIR must name the source tree (tests/CMakeLists.txt sets it)"
#endif

char *doc_table_slurp(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", NODESTATE_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    cr_assert_geq(n, 0);
    cr_assert_eq(fseek(f, 0, SEEK_SET), 0);
    char *s = malloc((size_t)n + 1);
    cr_assert_not_null(s);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

const char *doc_table_find(const char *doc, const char *header)
{
    size_t hn = strlen(header);
    const char *p = doc;
    for (;;) {
        p = strstr(p, header);
        cr_assert_not_null(p, "no table headed \"%s\"", header);
        if ((p == doc || p[-1] == '\n') && p[hn] == '\n')
            break;
        p += hn;
    }
    p += hn + 1;
    cr_assert_eq(strncmp(p, "|---|", 5), 0, "the table headed \"%s\" has no separator row",
                 header);
    return doc_table_next(p);
}

const char *doc_table_next(const char *row)
{
    const char *nl = strchr(row, '\n');
    cr_assert_not_null(nl, "a table row does not end: %.60s", row);
    return nl + 1;
}

const char *doc_table_cell(const char *p, char *out, size_t size)
{
    size_t n = strcspn(p, "|\n");
    cr_assert_eq(p[n], '|', "a table row ends early: %.60s", p);
    const char *b = p, *e = p + n;
    while (b < e && *b == ' ')
        b++;
    while (e > b && e[-1] == ' ')
        e--;
    cr_assert_lt((size_t)(e - b), size, "a table cell is too long: %.60s", b);
    memcpy(out, b, (size_t)(e - b));
    out[e - b] = '\0';
    return p + n + 1;
}

char *doc_table_unquote(char *s)
{
    size_t n = strlen(s);
    cr_assert(n >= 2 && s[0] == '`' && s[n - 1] == '`', "not in backticks: %s", s);
    s[n - 1] = '\0';
    return s + 1;
}
