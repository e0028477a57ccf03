/*
 * readthrough: what the engine's cache lacks, read from SQLite on the
 * read-only connection and merged with what is cached (cached rows win):
 * one node for a write or a node's GET, a page of stored rows for a
 * listing, the whole run for a summary or a delete. Each is called with the
 * engine's lock held and drops it while reading the file.
 */
#ifndef NODESTATE_READTHROUGH_H
#define NODESTATE_READTHROUGH_H

#include <stdbool.h>
#include <stddef.h>

#include "engine_internal.h"

/* The cached run, complete, or a light view of it (see readthrough.c); lock held. */
cache_run *readthrough_run_whole(engine *e, const char *run_id, bool light, engine_result *res,
                                 cache_run **view);
/* The run holding node_id, with its current row in *cur (see readthrough.c); lock held. */
cache_run *readthrough_run_node(engine *e, const char *run_id, const char *node_id,
                                bool create, ns_row **cur, engine_result *res);
/* A page of a run not cached whole (see readthrough.c); lock held. */
engine_result readthrough_list(engine *e, const char *run_id, unsigned status_mask,
                              const char *after, size_t limit, engine_page *page,
                              ns_row **cached);

#endif
