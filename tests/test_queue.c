/*
 * Unit tests for queue: first in first out, the ring wrapping around, a
 * full queue refusing without changing, pop taking at most max, peek, and
 * the bytes an op is counted for.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "queue.h"

static ns_op op(int64_t seq)
{
    ns_op o;
    memset(&o, 0, sizeof o);
    o.seq = seq;
    o.enqueued_ns = seq * 10;
    return o;
}

static queue *new_queue(size_t capacity)
{
    queue *q = queue_new(capacity);
    cr_assert_not_null(q);
    return q;
}

Test(queue, zero_capacity_refused)
{
    cr_assert_null(queue_new(0));
    queue_free(NULL);
}

Test(queue, empty)
{
    queue *q = new_queue(4);
    ns_op out[4];
    cr_assert_eq(queue_len(q), 0);
    cr_assert_eq(queue_capacity(q), 4);
    cr_assert_null(queue_peek(q));
    cr_assert_eq(queue_pop(q, out, 4), 0);
    queue_free(q);
}

Test(queue, fifo)
{
    queue *q = new_queue(8);
    for (int64_t s = 1; s <= 5; s++) {
        ns_op o = op(s);
        cr_assert_eq(queue_push(q, &o), 0);
    }
    cr_assert_eq(queue_len(q), 5);
    cr_assert_eq(queue_peek(q)->seq, 1);
    ns_op out[8];
    cr_assert_eq(queue_pop(q, out, 8), 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(out[i].seq, i + 1);
        cr_assert_eq(out[i].enqueued_ns, (i + 1) * 10);
    }
    cr_assert_eq(queue_len(q), 0);
    cr_assert_null(queue_peek(q));
    queue_free(q);
}

Test(queue, op_fields_copied)
{
    queue *q = new_queue(2);
    char run[] = "r";
    ns_op o = op(9);
    o.delete_run = run;
    o.run = (struct cache_run *)&o; /* any pointer: the queue only carries it */
    cr_assert_eq(queue_push(q, &o), 0);
    ns_op in = o;
    o.seq = 100; /* the queue holds a copy, not the caller's struct */
    ns_op out;
    cr_assert_eq(queue_pop(q, &out, 1), 1);
    cr_assert_eq(out.seq, 9);
    cr_assert_eq(out.delete_run, run);
    cr_assert_eq(out.run, in.run);
    cr_assert_null(out.row);
    queue_free(q);
}

Test(queue, full_refuses_and_changes_nothing)
{
    queue *q = new_queue(3);
    for (int64_t s = 1; s <= 3; s++) {
        ns_op o = op(s);
        cr_assert_eq(queue_push(q, &o), 0);
    }
    ns_op extra = op(4);
    cr_assert_eq(queue_push(q, &extra), -1);
    cr_assert_eq(queue_push(q, &extra), -1);
    cr_assert_eq(queue_len(q), 3);
    cr_assert_eq(queue_peek(q)->seq, 1);
    ns_op out[4];
    cr_assert_eq(queue_pop(q, out, 4), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(out[i].seq, i + 1);
    /* Room again after a pop. */
    cr_assert_eq(queue_push(q, &extra), 0);
    queue_free(q);
}

Test(queue, capacity_one)
{
    queue *q = new_queue(1);
    ns_op a = op(1), b = op(2), out;
    for (int round = 0; round < 5; round++) {
        cr_assert_eq(queue_push(q, &a), 0);
        cr_assert_eq(queue_push(q, &b), -1);
        cr_assert_eq(queue_pop(q, &out, 1), 1);
        cr_assert_eq(out.seq, 1);
    }
    queue_free(q);
}

Test(queue, pop_takes_at_most_max)
{
    queue *q = new_queue(10);
    for (int64_t s = 1; s <= 7; s++) {
        ns_op o = op(s);
        cr_assert_eq(queue_push(q, &o), 0);
    }
    ns_op out[10];
    memset(out, 0, sizeof out);
    cr_assert_eq(queue_pop(q, out, 3), 3);
    cr_assert_eq(out[0].seq, 1);
    cr_assert_eq(out[2].seq, 3);
    cr_assert_eq(out[3].seq, 0, "pop wrote past max");
    cr_assert_eq(queue_len(q), 4);
    cr_assert_eq(queue_peek(q)->seq, 4);
    cr_assert_eq(queue_pop(q, out, 0), 0);
    cr_assert_eq(queue_len(q), 4);
    cr_assert_eq(queue_pop(q, out, 10), 4);
    cr_assert_eq(out[0].seq, 4);
    cr_assert_eq(out[3].seq, 7);
    cr_assert_eq(queue_len(q), 0);
    queue_free(q);
}

Test(queue, wraparound_keeps_order)
{
    /* Push and pop in uneven steps so head and tail cross the end of the ring many times. */
    enum { CAP = 5 };
    queue *q = new_queue(CAP);
    int64_t next_in = 1, next_out = 1;
    ns_op out[CAP];
    for (int round = 0; round < 200; round++) {
        size_t push = (size_t)(round % 4) + 1;
        for (size_t i = 0; i < push; i++) {
            ns_op o = op(next_in);
            if (queue_len(q) == CAP) {
                cr_assert_eq(queue_push(q, &o), -1);
                break;
            }
            cr_assert_eq(queue_push(q, &o), 0);
            next_in++;
        }
        cr_assert_eq((int64_t)queue_len(q), next_in - next_out);
        cr_assert_eq(queue_peek(q)->seq, next_out);
        size_t n = queue_pop(q, out, (size_t)(round % 3) + 1);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(out[i].seq, next_out++, "round %d", round);
    }
    size_t n;
    while ((n = queue_pop(q, out, CAP)) > 0)
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(out[i].seq, next_out++);
    cr_assert_eq(next_out, next_in);
    cr_assert_gt(next_in, 3 * CAP, "the ring never wrapped");
    queue_free(q);
}

Test(queue, op_bytes_count_the_row_and_its_strings)
{
    ns_row r;
    memset(&r, 0, sizeof r);
    r.run_id = "run";          /* 4 with the NUL */
    r.node_id = "n1";          /* 3 */
    r.outputs = "{\"a\":1}";   /* 8 */
    ns_op up = op(1);
    up.row = &r;
    cr_assert_eq(queue_op_bytes(&up), sizeof r + 4 + 3 + 8);
    r.last_error = "boom";     /* 5 */
    r.resume_state = "[]";     /* 3 */
    r.suspension_reason = "";  /* 1 */
    cr_assert_eq(queue_op_bytes(&up), sizeof r + 4 + 3 + 8 + 5 + 3 + 1);

    char run[] = "gone";
    ns_op del = op(2);
    del.delete_run = run;
    cr_assert_eq(queue_op_bytes(&del), 5);
}
