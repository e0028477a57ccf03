#include "deadline.h"

#include <stdlib.h>

/* First size of a heap's array; it doubles as items pile up. */
#define DEADLINE_FIRST_CAP 64

void deadline_item_init(deadline_item *it)
{
    it->at = 0;
    it->index = SIZE_MAX;
}

bool deadline_item_queued(const deadline_item *it)
{
    return it->index != SIZE_MAX;
}

void deadline_init(deadline_heap *h)
{
    h->items = NULL;
    h->n = 0;
    h->cap = 0;
}

void deadline_free(deadline_heap *h)
{
    free(h->items);
    deadline_init(h);
}

static void deadline_put(deadline_heap *h, size_t i, deadline_item *it)
{
    h->items[i] = it;
    it->index = i;
}

static void deadline_up(deadline_heap *h, size_t i)
{
    deadline_item *it = h->items[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (h->items[parent]->at <= it->at)
            break;
        deadline_put(h, i, h->items[parent]);
        i = parent;
    }
    deadline_put(h, i, it);
}

static void deadline_down(deadline_heap *h, size_t i)
{
    deadline_item *it = h->items[i];

    for (;;) {
        size_t child = 2 * i + 1;

        if (child >= h->n)
            break;
        if (child + 1 < h->n && h->items[child + 1]->at < h->items[child]->at)
            child++;
        if (it->at <= h->items[child]->at)
            break;
        deadline_put(h, i, h->items[child]);
        i = child;
    }
    deadline_put(h, i, it);
}

int deadline_push(deadline_heap *h, deadline_item *it, int64_t at)
{
    if (h->n == h->cap) {
        size_t cap = h->cap != 0 ? h->cap * 2 : DEADLINE_FIRST_CAP;
        deadline_item **grown;

        if (cap > SIZE_MAX / sizeof *grown)
            return -1;
        grown = realloc(h->items, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        h->items = grown;
        h->cap = cap;
    }
    it->at = at;
    deadline_put(h, h->n, it);
    h->n++;
    deadline_up(h, h->n - 1);
    return 0;
}

void deadline_remove(deadline_heap *h, deadline_item *it)
{
    size_t i = it->index;
    deadline_item *last;

    if (i == SIZE_MAX || i >= h->n || h->items[i] != it)
        return;
    it->index = SIZE_MAX;
    last = h->items[--h->n];
    if (i == h->n)
        return;
    /* The last item fills the hole and moves whichever way restores order. */
    deadline_put(h, i, last);
    if (i > 0 && last->at < h->items[(i - 1) / 2]->at)
        deadline_up(h, i);
    else
        deadline_down(h, i);
}

deadline_item *deadline_first(const deadline_heap *h)
{
    return h->n > 0 ? h->items[0] : NULL;
}

size_t deadline_count(const deadline_heap *h)
{
    return h->n;
}
