/*
 * Unit tests for problems: the table of problem types is sound (distinct
 * slugs fit for a URI, an error status, a title), and the two documents
 * that list problem types say what the table says: the README's "Problem
 * types" table row for row, and openapi.yaml's examples (slug, title,
 * status) and descriptions (every slug named).
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/problems.h"

#ifndef NODESTATE_SOURCE_DIR
#error "NODESTATE_SOURCE_DIR must name the source tree (tests/CMakeLists.txt sets it)"
#endif

#define README_HEADER "| slug | status | title | when |"

/* The whole file under the source tree, NUL-terminated; the test fails if unreadable. */
static char *slurp(const char *name)
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

/* The id of slug (len bytes), or PROBLEM_COUNT when the table has none. */
static problem_id find(const char *slug, size_t len)
{
    for (int i = 0; i < PROBLEM_COUNT; i++) {
        const char *s = problems_get((problem_id)i)->slug;
        if (strlen(s) == len && memcmp(s, slug, len) == 0)
            return (problem_id)i;
    }
    return PROBLEM_COUNT;
}

/* The text of a table cell between p and the next '|', trimmed, into out. */
static const char *cell(const char *p, char *out, size_t size)
{
    size_t n = strcspn(p, "|\n");
    cr_assert_eq(p[n], '|', "a README row ends early: %.60s", p);
    const char *b = p, *e = p + n;
    while (b < e && *b == ' ')
        b++;
    while (e > b && e[-1] == ' ')
        e--;
    cr_assert_lt((size_t)(e - b), size, "a README cell is too long: %.60s", b);
    memcpy(out, b, (size_t)(e - b));
    out[e - b] = '\0';
    return p + n + 1;
}

/* s without its enclosing backticks, in place; the test fails if it has none. */
static char *unquote(char *s)
{
    size_t n = strlen(s);
    cr_assert(n >= 2 && s[0] == '`' && s[n - 1] == '`', "not in backticks: %s", s);
    s[n - 1] = '\0';
    return s + 1;
}

Test(problems, every_type_is_sound)
{
    for (int i = 0; i < PROBLEM_COUNT; i++) {
        const problem_type *t = problems_get((problem_id)i);
        cr_assert_geq(t->status, 400, "%s: status %d is not an error", t->slug, t->status);
        cr_assert_leq(t->status, 599, "%s: status %d is not an error", t->slug, t->status);
        cr_assert_gt(strlen(t->slug), 0, "problem %d has no slug", i);
        /* The slug goes into the type URI unescaped. */
        cr_assert_eq(strspn(t->slug, "abcdefghijklmnopqrstuvwxyz-"), strlen(t->slug),
                     "slug \"%s\" is not lower-case letters and '-'", t->slug);
        cr_assert(t->slug[0] != '-' && t->slug[strlen(t->slug) - 1] != '-', "%s", t->slug);
        cr_assert_not_null(t->title);
        cr_assert_gt(strlen(t->title), 0, "%s has an empty title", t->slug);
        for (int j = 0; j < i; j++)
            cr_assert_str_neq(problems_get((problem_id)j)->slug, t->slug,
                              "slug \"%s\" is used twice", t->slug);
    }
}

Test(problems, readme_table_matches)
{
    char *readme = slurp("README.md");
    const char *p = strstr(readme, "\n" README_HEADER "\n");
    cr_assert_not_null(p, "README.md has no table headed \"%s\"", README_HEADER);
    p = strchr(p + 1, '\n') + 1;
    cr_assert_eq(strncmp(p, "|---|", 5), 0, "the problem table has no separator row");
    p = strchr(p, '\n') + 1;
    bool seen[PROBLEM_COUNT] = { false };
    int rows = 0;
    for (; *p == '|'; p = strchr(p, '\n') + 1) {
        char slug_cell[64], status_cell[16], title[128], when[512];
        const char *q = cell(p + 1, slug_cell, sizeof slug_cell);
        q = cell(q, status_cell, sizeof status_cell);
        q = cell(q, title, sizeof title);
        cell(q, when, sizeof when);
        char *slug = unquote(slug_cell);
        int status = atoi(unquote(status_cell));
        problem_id id = find(slug, strlen(slug));
        cr_assert_neq(id, PROBLEM_COUNT, "README lists \"%s\", which the service never answers",
                      slug);
        const problem_type *t = problems_get(id);
        cr_assert_not(seen[id], "README lists \"%s\" twice", slug);
        seen[id] = true;
        cr_assert_eq(status, t->status, "README: %s is %d, the service answers %d", slug,
                     status, t->status);
        cr_assert_str_eq(title, t->title, "README: the title of %s", slug);
        cr_assert_gt(strlen(when), 0, "README: %s does not say when", slug);
        rows++;
        cr_assert_not_null(strchr(p, '\n'));
    }
    for (int i = 0; i < PROBLEM_COUNT; i++)
        cr_assert(seen[i], "README's problem table lacks \"%s\"", problems_get((problem_id)i)->slug);
    cr_assert_eq(rows, PROBLEM_COUNT);
    free(readme);
}

/* The value of "key: value" on the line after p, or "" when the line is not that key. */
static void next_value(const char *p, const char *key, char *out, size_t size)
{
    out[0] = '\0';
    const char *line = strchr(p, '\n');
    if (!line)
        return;
    line++;
    line += strspn(line, " ");
    size_t k = strlen(key);
    if (strncmp(line, key, k) != 0 || line[k] != ':' || line[k + 1] != ' ')
        return;
    line += k + 2;
    size_t n = strcspn(line, "\n");
    if (n >= size)
        n = size - 1;
    memcpy(out, line, n);
    out[n] = '\0';
}

Test(problems, openapi_examples_and_descriptions_match)
{
    char *spec = slurp("openapi.yaml");
    static const char urn[] = "urn:nodestate:problem:";
    int examples = 0;
    for (const char *p = strstr(spec, urn); p; p = strstr(p + 1, urn)) {
        const char *slug = p + strlen(urn);
        size_t n = strspn(slug, "abcdefghijklmnopqrstuvwxyz-");
        if (n == 0)
            continue; /* the "<slug>" of the prose and the schema's pattern */
        problem_id id = find(slug, n);
        cr_assert_neq(id, PROBLEM_COUNT, "openapi.yaml names \"%.*s\", which the service "
                      "never answers", (int)n, slug);
        const problem_type *t = problems_get(id);
        if (strncmp(p - 6, "type: ", 6) != 0)
            continue; /* mentioned, not an example */
        /* An example: type, then title and status on the next lines. */
        char title[128], status[16];
        next_value(p, "title", title, sizeof title);
        cr_assert_str_eq(title, t->title, "openapi.yaml: the example of %s has title \"%s\"",
                         t->slug, title);
        next_value(strchr(p, '\n') + 1, "status", status, sizeof status);
        cr_assert_eq(atoi(status), t->status, "openapi.yaml: the example of %s has status %s",
                     t->slug, status);
        examples++;
    }
    cr_assert_gt(examples, 0, "openapi.yaml has no problem example; the search is broken");
    for (int i = 0; i < PROBLEM_COUNT; i++) {
        char quoted[80];
        snprintf(quoted, sizeof quoted, "`%s`", problems_get((problem_id)i)->slug);
        cr_assert_not_null(strstr(spec, quoted), "openapi.yaml never describes %s", quoted);
    }
    free(spec);
}
