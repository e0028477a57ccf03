/*
 * Unit tests for idfilter: never a wrong "no" for an id added (through
 * several stages of growth), few false "maybe"s for ids never added, the
 * size bound, and an empty (NULL) filter.
 */
#include <criterion/criterion.h>

#include <stdio.h>

#include "idfilter.h"

Test(idfilter, empty_holds_nothing)
{
    cr_assert_not(idfilter_may_have(NULL, "a"));
    cr_assert_eq(idfilter_ids(NULL), 0);
    cr_assert_eq(idfilter_bytes(NULL), 0);
    idfilter_free(NULL);
}

Test(idfilter, every_id_added_is_a_maybe_and_few_others_are)
{
    enum { IDS = 20000, OTHERS = 20000 };
    idfilter *f = NULL;
    char id[32];
    for (int i = 0; i < IDS; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert_eq(idfilter_add(&f, id), 0);
    }
    cr_assert_eq(idfilter_ids(f), IDS);
    for (int i = 0; i < IDS; i++) {
        snprintf(id, sizeof id, "n%d", i);
        cr_assert(idfilter_may_have(f, id), "%s added but called absent", id);
    }
    int maybes = 0;
    for (int i = 0; i < OTHERS; i++) {
        snprintf(id, sizeof id, "other-%d", i);
        maybes += idfilter_may_have(f, id);
    }
    /* About 0.1% per full stage, five stages here: well under 2%. */
    cr_assert_lt(maybes, OTHERS / 50, "%d false maybes of %d", maybes, OTHERS);
    /* 2 to 4 bytes per id, and a little per stage. */
    cr_assert_leq(idfilter_bytes(f), (size_t)IDS * 4 + 4096);
    idfilter_free(f);
}

Test(idfilter, refuses_past_its_bound_and_stays_right)
{
    idfilter *f = NULL;
    char id[32];
    size_t i = 0;
    for (; i < IDFILTER_MAX_IDS; i++) {
        snprintf(id, sizeof id, "%zu", i);
        cr_assert_eq(idfilter_add(&f, id), 0, "refused at %zu", i);
    }
    cr_assert_eq(idfilter_add(&f, "one-more"), -1);
    cr_assert_eq(idfilter_ids(f), IDFILTER_MAX_IDS);
    cr_assert(idfilter_may_have(f, "0"));
    cr_assert(idfilter_may_have(f, id));
    idfilter_free(f);
}
