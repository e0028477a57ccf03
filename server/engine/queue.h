/*
 * queue: the bounded FIFO of accepted writes between the request threads and
 * the writer. A fixed ring allocated once at start, so a full queue is a
 * refusal (backpressure), never more memory. Each op also carries its size
 * in bytes (queue_op_bytes), which the engine adds up to bound the memory
 * the queued rows hold, not only their number. Not thread-safe: the engine's
 * lock guards it, which is what makes acceptance atomic and keeps queue
 * order equal to seq order.
 */
#ifndef NODESTATE_QUEUE_H
#define NODESTATE_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

struct cache_run;

/* One accepted write: an upsert of a row, or the deletion of a run. */
typedef struct ns_op {
    ns_row *row;              /* upsert: the new row (one reference); NULL for a delete */
    char *delete_run;         /* delete: the run id (malloc'd); NULL for an upsert */
    struct cache_run *run;    /* the cached run this op keeps pinned until committed */
    int64_t seq;
    int64_t enqueued_ns;      /* CLOCK_MONOTONIC at acceptance */
    size_t bytes;             /* queue_op_bytes, set by whoever queues it */
    bool forced;              /* upsert: accepted with force: true (the store judges by seq alone) */
} ns_op;

typedef struct queue queue;

/* A queue for at most capacity ops (>= 1); NULL when out of memory. */
queue *queue_new(size_t capacity);
/* Frees the ring; ops still inside are the caller's to release first. */
void queue_free(queue *q);
size_t queue_len(const queue *q);
size_t queue_capacity(const queue *q);
/* Appends op; -1 (and nothing changes) when full. */
int queue_push(queue *q, const ns_op *op);
/* The oldest op, or NULL when empty. */
const ns_op *queue_peek(const queue *q);
/* Moves up to max oldest ops into out, oldest first; returns how many. */
size_t queue_pop(queue *q, ns_op *out, size_t max);
/*
 * The memory an op keeps alive while queued: its row (the struct and every
 * string packed with it: ids, texts, JSON) or the run id of a delete. The
 * ring slot itself is not counted, it is allocated once at start.
 */
size_t queue_op_bytes(const ns_op *op);

#endif
