/*
 * deadline: a binary min-heap of deadlines whose items live inside their
 * owners (no allocation per item), so that one timer can wait for the
 * earliest of many deadlines that differ per owner and are cancelled far
 * more often than they fire. The HTTP transport keeps two: parked ?wait=true
 * requests, and connections that still owe a request's headers. Not
 * thread-safe: the owner's lock guards a heap and all of its items.
 */
#ifndef NODESTATE_DEADLINE_H
#define NODESTATE_DEADLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Embedded in its owner; deadline_item_init before first use. */
typedef struct deadline_item {
    int64_t at;          /* the deadline, on whatever clock the owner uses */
    size_t index;        /* place in the heap; SIZE_MAX when not on one */
} deadline_item;

typedef struct deadline_heap {
    deadline_item **items;   /* items[0] is the earliest */
    size_t n;
    size_t cap;
} deadline_heap;

void deadline_item_init(deadline_item *it);
/* Whether it is on a heap now. */
bool deadline_item_queued(const deadline_item *it);

void deadline_init(deadline_heap *h);
/* Frees the array; the items are their owners'. */
void deadline_free(deadline_heap *h);
/* Adds it (not on any heap) with deadline at. 0, or -1 when out of memory. */
int deadline_push(deadline_heap *h, deadline_item *it, int64_t at);
/* Takes it off h; nothing when it is not queued. */
void deadline_remove(deadline_heap *h, deadline_item *it);
/* The earliest item, or NULL when h is empty. */
deadline_item *deadline_first(const deadline_heap *h);
size_t deadline_count(const deadline_heap *h);

#endif
