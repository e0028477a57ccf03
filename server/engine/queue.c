#include "queue.h"

#include <stdlib.h>
#include <string.h>

struct queue {
    ns_op *ring;      /* capacity slots */
    size_t capacity;
    size_t head;      /* index of the oldest op */
    size_t len;
};

queue *queue_new(size_t capacity)
{
    if (capacity == 0)
        return NULL;
    queue *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->ring = calloc(capacity, sizeof *q->ring);
    if (!q->ring) {
        free(q);
        return NULL;
    }
    q->capacity = capacity;
    return q;
}

void queue_free(queue *q)
{
    if (!q)
        return;
    free(q->ring);
    free(q);
}

size_t queue_len(const queue *q)
{
    return q->len;
}

size_t queue_capacity(const queue *q)
{
    return q->capacity;
}

int queue_push(queue *q, const ns_op *op)
{
    if (q->len == q->capacity)
        return -1;
    size_t tail = q->head + q->len;
    if (tail >= q->capacity)
        tail -= q->capacity;
    q->ring[tail] = *op;
    q->len++;
    return 0;
}

const ns_op *queue_peek(const queue *q)
{
    return q->len ? &q->ring[q->head] : NULL;
}

size_t queue_pop(queue *q, ns_op *out, size_t max)
{
    size_t n = max < q->len ? max : q->len;
    for (size_t i = 0; i < n; i++) {
        out[i] = q->ring[q->head];
        if (++q->head == q->capacity)
            q->head = 0;
    }
    q->len -= n;
    return n;
}


size_t queue_op_bytes(const ns_op *op)
{
    if (!op->row)
        return op->delete_run ? strlen(op->delete_run) + 1 : 0;
    return model_row_bytes(op->row);
}
