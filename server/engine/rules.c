#include "rules.h"

#include <string.h>

static const char *text_or(const ns_text *t, const char *current)
{
    return t->set ? t->value : current;
}

rules_verdict rules_apply(const ns_row *cur, const char *run_id,
                          const char *node_id, const ns_update *u,
                          int64_t now_ms, ns_row *draft)
{
    int64_t attempt = u->has_attempt ? u->attempt : (cur ? cur->attempt : 1);

    if (cur && !u->force) {
        if (attempt < cur->attempt)
            return RULES_STALE;
        if (attempt == cur->attempt) {
            if (model_status_rank(u->status) < model_status_rank(cur->status))
                return RULES_ILLEGAL;
            if (model_status_terminal(cur->status) && u->status != cur->status)
                return RULES_ILLEGAL;
        }
    }

    memset(draft, 0, sizeof *draft);
    draft->run_id = run_id;
    draft->node_id = node_id;
    for (int i = 0; i < NS_TS_COUNT; i++)
        draft->ts[i] = NS_TS_NULL;

    bool new_try = !cur || attempt > cur->attempt;
    if (cur) {
        draft->seq = cur->seq;
        draft->updated_at = cur->updated_at;
        draft->ts[NS_TS_SCHEDULED] = cur->ts[NS_TS_SCHEDULED];
        draft->resume_state = cur->resume_state;
        if (!new_try) {
            memcpy(draft->ts, cur->ts, sizeof draft->ts);
            draft->last_error = cur->last_error;
            draft->retryable = cur->retryable;
            draft->suspension_reason = cur->suspension_reason;
            draft->outputs = cur->outputs;
        }
    }
    draft->status = u->status;
    draft->attempt = attempt;

    for (int i = 0; i < NS_TS_COUNT; i++)
        if (u->ts_set & (1u << i))
            draft->ts[i] = u->ts[i];
    draft->last_error = text_or(&u->last_error, draft->last_error);
    draft->suspension_reason = text_or(&u->suspension_reason, draft->suspension_reason);
    draft->resume_state = text_or(&u->resume_state, draft->resume_state);
    draft->outputs = text_or(&u->outputs, draft->outputs);
    if (u->has_retryable)
        draft->retryable = u->retryable;

    bool moving = new_try || u->status != cur->status;
    int f = model_status_ts_field(u->status);
    if (moving && f >= 0 && !(u->ts_set & (1u << f)))
        draft->ts[f] = now_ms;

    if (cur && model_row_same(cur, draft))
        return RULES_DUPLICATE;
    /* Past here the update changes something: a terminal state only takes a forced change. */
    if (cur && !u->force && !new_try && model_status_terminal(cur->status))
        return RULES_ILLEGAL;
    return RULES_APPLY;
}
