/*
 * rules: the transition rules (docs/design.md §3) as one pure function. Given the
 * current row (or none) and an update, it decides whether the update applies,
 * changes nothing, is stale or is illegal, and builds the row that results.
 *
 *  - ranks: idle 0, scheduled 1, running/paused/suspended 2, completed/failed 3;
 *  - attempt is a fencing token: lower is stale; higher starts a new try and
 *    clears the attempt's own fields (started_at, completed_at, failed_at,
 *    suspended_at, last_error, suspension_reason, outputs, retryable) first;
 *    scheduled_at and resume_state carry over, since a retry or a resume
 *    after a dead worker needs them;
 *  - within one attempt no move to a lower rank, and a terminal status is
 *    final (the same terminal status with other values is refused too);
 *  - moving into a status (new node, new attempt or another status) stamps
 *    its timestamp with now_ms unless the update gives that field;
 *  - force skips the checks but not the field handling.
 */
#ifndef NODESTATE_RULES_H
#define NODESTATE_RULES_H

#include <stdint.h>

#include "model.h"

typedef enum rules_verdict {
    RULES_APPLY,      /* *draft is the new state */
    RULES_DUPLICATE,  /* the update changes nothing */
    RULES_STALE,      /* attempt lower than the current one */
    RULES_ILLEGAL     /* refused by the rank or terminal rules */
} rules_verdict;

/*
 * cur is NULL for a node never seen. On RULES_APPLY and RULES_DUPLICATE,
 * *draft holds the resulting state, its strings borrowed from cur, u and the
 * ids; seq and updated_at are copied from cur (0 for a new node) for the
 * caller to set. On the other verdicts *draft is unspecified.
 */
rules_verdict rules_apply(const ns_row *cur, const char *run_id,
                          const char *node_id, const ns_update *u,
                          int64_t now_ms, ns_row *draft);

#endif
