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

#include "problems.h"
#include "doc_table.h"

#define README_HEADER "| slug | status | title | when |"

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
    char *readme = doc_table_slurp("README.md");
    const char *p = doc_table_find(readme, README_HEADER);
    bool seen[PROBLEM_COUNT] = { false };
    int rows = 0;
    for (; *p == '|'; p = doc_table_next(p)) {
        char slug_cell[64], status_cell[16], title[128], when[512];
        const char *q = doc_table_cell(p + 1, slug_cell, sizeof slug_cell);
        q = doc_table_cell(q, status_cell, sizeof status_cell);
        q = doc_table_cell(q, title, sizeof title);
        doc_table_cell(q, when, sizeof when);
        char *slug = doc_table_unquote(slug_cell);
        int status = atoi(doc_table_unquote(status_cell));
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
    char *spec = doc_table_slurp("openapi.yaml");
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
