/* Unit tests of server/util/deadline: heap order under pushes and removals anywhere. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "deadline.h"

#define N 1000

/* Pops everything in order, asserting the deadlines never go down. */
static size_t drain_sorted(deadline_heap *h)
{
    int64_t last = INT64_MIN;
    size_t popped = 0;
    deadline_item *it;

    while ((it = deadline_first(h)) != NULL) {
        cr_assert_geq(it->at, last, "out of order: %lld after %lld",
                      (long long)it->at, (long long)last);
        last = it->at;
        deadline_remove(h, it);
        cr_assert_not(deadline_item_queued(it));
        popped++;
    }
    return popped;
}

Test(deadline, empty)
{
    deadline_heap h;

    deadline_init(&h);
    cr_assert_null(deadline_first(&h));
    cr_assert_eq(deadline_count(&h), 0);
    deadline_free(&h);
}

Test(deadline, pops_in_deadline_order)
{
    static deadline_item items[N];
    deadline_heap h;

    deadline_init(&h);
    srand(7);
    for (size_t i = 0; i < N; i++) {
        deadline_item_init(&items[i]);
        cr_assert_not(deadline_item_queued(&items[i]));
        cr_assert_eq(deadline_push(&h, &items[i], rand() % 100), 0);
        cr_assert(deadline_item_queued(&items[i]));
    }
    cr_assert_eq(deadline_count(&h), N);
    cr_assert_eq(drain_sorted(&h), N);
    deadline_free(&h);
}

Test(deadline, removals_anywhere_keep_order)
{
    static deadline_item items[N];
    deadline_heap h;

    deadline_init(&h);
    srand(11);
    for (size_t i = 0; i < N; i++) {
        deadline_item_init(&items[i]);
        cr_assert_eq(deadline_push(&h, &items[i], rand() % 1000), 0);
    }
    /* Every third, from the middle of the heap as much as its ends. */
    for (size_t i = 0; i < N; i += 3)
        deadline_remove(&h, &items[i]);
    cr_assert_eq(deadline_count(&h), N - (N + 2) / 3);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(deadline_item_queued(&items[i]), i % 3 != 0);
    cr_assert_eq(drain_sorted(&h), N - (N + 2) / 3);
    deadline_free(&h);
}

Test(deadline, remove_twice_and_requeue)
{
    deadline_item a, b;
    deadline_heap h;

    deadline_init(&h);
    deadline_item_init(&a);
    deadline_item_init(&b);
    deadline_remove(&h, &a); /* not queued: nothing */
    cr_assert_eq(deadline_push(&h, &a, 5), 0);
    cr_assert_eq(deadline_push(&h, &b, 9), 0);
    deadline_remove(&h, &a);
    deadline_remove(&h, &a);
    cr_assert_eq(deadline_count(&h), 1);
    cr_assert_eq(deadline_first(&h), &b);
    cr_assert_eq(deadline_push(&h, &a, 1), 0);
    cr_assert_eq(deadline_first(&h), &a);
    cr_assert_eq(deadline_first(&h)->at, 1);
    deadline_free(&h);
}
