#include "waitq.h"

#include <stddef.h>

/* The waitq_item a deadline_item of waitq.deadlines is embedded in. */
#define WAITQ_OF(d) ((waitq_item *)(void *)((char *)(d) - offsetof(waitq_item, deadline)))

void waitq_item_init(waitq_item *it)
{
    it->seq = 0;
    it->next = it->prev = NULL;
    deadline_item_init(&it->deadline);
}

bool waitq_item_queued(const waitq_item *it)
{
    return deadline_item_queued(&it->deadline);
}

void waitq_init(waitq *q)
{
    q->head = q->tail = NULL;
    deadline_init(&q->deadlines);
}

void waitq_free(waitq *q)
{
    deadline_free(&q->deadlines);
    q->head = q->tail = NULL;
}

int waitq_push(waitq *q, waitq_item *it, int64_t seq, int64_t deadline)
{
    waitq_item *after = q->tail;

    if (deadline_push(&q->deadlines, &it->deadline, deadline) != 0)
        return -1;
    it->seq = seq;
    while (after != NULL && after->seq > seq)
        after = after->prev;
    it->prev = after;
    it->next = after != NULL ? after->next : q->head;
    if (it->next != NULL)
        it->next->prev = it;
    else
        q->tail = it;
    if (after != NULL)
        after->next = it;
    else
        q->head = it;
    return 0;
}

void waitq_remove(waitq *q, waitq_item *it)
{
    if (!waitq_item_queued(it))
        return;
    if (it->prev != NULL)
        it->prev->next = it->next;
    else
        q->head = it->next;
    if (it->next != NULL)
        it->next->prev = it->prev;
    else
        q->tail = it->prev;
    it->next = it->prev = NULL;
    deadline_remove(&q->deadlines, &it->deadline);
}

waitq_item *waitq_lowest(const waitq *q)
{
    return q->head;
}

waitq_item *waitq_earliest(const waitq *q)
{
    deadline_item *d = deadline_first(&q->deadlines);

    return d != NULL ? WAITQ_OF(d) : NULL;
}

size_t waitq_count(const waitq *q)
{
    return deadline_count(&q->deadlines);
}
