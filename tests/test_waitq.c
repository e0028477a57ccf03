/*
 * Unit tests of server/http/waitq: the parked requests in seq order and in
 * deadline order at once, under pushes and removals anywhere.
 */
#include <criterion/criterion.h>

#include "waitq.h"

#define N 64

static waitq q;
static waitq_item items[N];

static void setup(void)
{
    waitq_init(&q);
    for (size_t i = 0; i < N; i++)
        waitq_item_init(&items[i]);
}

static void teardown(void)
{
    waitq_free(&q);
}

TestSuite(waitq, .init = setup, .fini = teardown);

/* The by-seq list, walked both ways, is sorted and holds exactly n items. */
static void assert_list(size_t n)
{
    size_t count = 0;
    int64_t last = INT64_MIN;
    waitq_item *prev = NULL;

    for (waitq_item *it = waitq_lowest(&q); it != NULL; it = it->next) {
        cr_assert_geq(it->seq, last);
        cr_assert_eq(it->prev, prev);
        last = it->seq;
        prev = it;
        count++;
    }
    cr_assert_eq(q.tail, prev);
    cr_assert_eq(count, n);
    cr_assert_eq(waitq_count(&q), n);
}

Test(waitq, empty)
{
    cr_assert_null(waitq_lowest(&q));
    cr_assert_null(waitq_earliest(&q));
    cr_assert_eq(waitq_count(&q), 0);
    cr_assert_not(waitq_item_queued(&items[0]));
    waitq_remove(&q, &items[0]); /* not queued: nothing happens */
    assert_list(0);
}

/* Seq order and deadline order differ: each view gives its own first. */
Test(waitq, two_orders)
{
    cr_assert_eq(waitq_push(&q, &items[0], 10, 300), 0);
    cr_assert_eq(waitq_push(&q, &items[1], 5, 900), 0);
    cr_assert_eq(waitq_push(&q, &items[2], 20, 100), 0);
    assert_list(3);
    cr_assert_eq(waitq_lowest(&q), &items[1]);
    cr_assert_eq(waitq_earliest(&q), &items[2]);
    cr_assert(waitq_item_queued(&items[0]));

    waitq_remove(&q, &items[2]);
    cr_assert_not(waitq_item_queued(&items[2]));
    cr_assert_eq(waitq_earliest(&q), &items[0]);
    waitq_remove(&q, &items[1]);
    cr_assert_eq(waitq_lowest(&q), &items[0]);
    assert_list(1);
}

/* Equal seqs keep their arrival order (the walk from the tail stops early). */
Test(waitq, equal_seqs_in_arrival_order)
{
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(waitq_push(&q, &items[i], 7, (int64_t)(100 - i)), 0);
    waitq_item *it = waitq_lowest(&q);
    for (size_t i = 0; i < 4; i++, it = it->next)
        cr_assert_eq(it, &items[i]);
    cr_assert_eq(waitq_earliest(&q), &items[3]);
}

/*
 * Out-of-order seqs, removals from the middle, the head and the tail, then
 * draining by lowest seq and by earliest deadline in turn: both orders hold
 * after every step and every item comes out exactly once.
 */
Test(waitq, mixed)
{
    size_t n = 0;

    for (size_t i = 0; i < N; i++) {
        /* Mostly rising, with some going back, as parks arrive. */
        int64_t seq = (int64_t)(i * 3 % 17 + i);
        int64_t deadline = (int64_t)((i * 37) % N);

        cr_assert_eq(waitq_push(&q, &items[i], seq, deadline), 0);
        cr_assert_eq(items[i].seq, seq);
        assert_list(++n);
    }
    for (size_t i = 1; i < N; i += 5) {
        waitq_remove(&q, &items[i]);
        assert_list(--n);
    }
    waitq_remove(&q, waitq_lowest(&q));
    assert_list(--n);
    waitq_remove(&q, q.tail);
    assert_list(--n);

    int64_t last_seq = INT64_MIN, last_deadline = INT64_MIN;
    bool by_seq = true;
    while (n > 0) {
        waitq_item *it;

        if (by_seq) {
            it = waitq_lowest(&q);
            cr_assert_geq(it->seq, last_seq);
            last_seq = it->seq;
        } else {
            it = waitq_earliest(&q);
            cr_assert_geq(it->deadline.at, last_deadline);
            last_deadline = it->deadline.at;
        }
        waitq_remove(&q, it);
        cr_assert_not(waitq_item_queued(it));
        assert_list(--n);
        by_seq = !by_seq;
    }
    cr_assert_null(waitq_lowest(&q));
    cr_assert_null(waitq_earliest(&q));
}
