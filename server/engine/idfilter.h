/*
 * idfilter: a set of ids that answers "maybe" or "no", never a wrong "no"
 * (a Bloom filter that grows). The cache keeps one per run for the node ids
 * it evicted, so a node that is neither cached nor in the filter is known
 * not to be stored and needs no read. A false "maybe" (under 1 in 50)
 * only costs that read.
 *
 * It grows in stages, each holding twice the ids of the one before, with
 * 16 bits per id: memory is 2 to 4 bytes per id added. Not thread-safe: its owner's lock guards it.
 */
#ifndef NODESTATE_IDFILTER_H
#define NODESTATE_IDFILTER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct idfilter idfilter;

/* Most ids one filter takes: past it idfilter_add fails. */
#define IDFILTER_MAX_IDS ((size_t)1 << 20)

/*
 * Adds id to *f (NULL: an empty filter, created here). -1 when it holds
 * IDFILTER_MAX_IDS already or memory runs out: the filter is unchanged and
 * still right, but the caller may no longer rely on it covering id.
 */
int idfilter_add(idfilter **f, const char *id);
/* false only when id was never added (NULL holds nothing). */
bool idfilter_may_have(const idfilter *f, const char *id);
/* Ids added. */
size_t idfilter_ids(const idfilter *f);
/* Bytes it takes. */
size_t idfilter_bytes(const idfilter *f);
/* NULL is a no-op. */
void idfilter_free(idfilter *f);

#endif
