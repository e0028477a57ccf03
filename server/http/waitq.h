/*
 * waitq: the requests parked until their update is durable (?wait=true),
 * each on two orders at once: by the seq it waits for (a list, so that a
 * commit answers the durable ones and stops at the first that is not) and
 * by its own deadline (a heap, because timeouts differ per request and the
 * timer needs only the earliest). The items live inside their owners (no
 * allocation per item but the heap's array). Not thread-safe: the owner's
 * lock guards a queue and all of its items.
 */
#ifndef NODESTATE_WAITQ_H
#define NODESTATE_WAITQ_H

#include <stdbool.h>
#include <stdint.h>

#include "deadline.h"

/* Embedded in its owner; waitq_item_init before first use. */
typedef struct waitq_item {
    int64_t seq;                /* what it waits for; set by waitq_push */
    deadline_item deadline;     /* on waitq.deadlines while queued */
    struct waitq_item *next;    /* by-seq list: higher seq */
    struct waitq_item *prev;    /*   lower seq */
} waitq_item;

typedef struct waitq {
    waitq_item *head;           /* lowest seq */
    waitq_item *tail;           /* highest seq */
    deadline_heap deadlines;    /* waitq_item.deadline of every item */
} waitq;

void waitq_item_init(waitq_item *it);
/* Whether it is on a queue now. */
bool waitq_item_queued(const waitq_item *it);

void waitq_init(waitq *q);
/* Frees the heap's array; the items are their owners'. */
void waitq_free(waitq *q);
/*
 * Queues it (not on any queue) waiting for seq until deadline. Items arrive
 * nearly in seq order, so the walk from the tail is short; equal seqs keep
 * their arrival order. 0, or -1 when out of memory (it is then on neither).
 */
int waitq_push(waitq *q, waitq_item *it, int64_t seq, int64_t deadline);
/* Takes it off q; nothing when it is not queued. */
void waitq_remove(waitq *q, waitq_item *it);
/* The item of the lowest seq, or NULL when q is empty. */
waitq_item *waitq_lowest(const waitq *q);
/* The item of the earliest deadline, or NULL when q is empty. */
waitq_item *waitq_earliest(const waitq *q);
size_t waitq_count(const waitq *q);

#endif
