#include "problems.h"

static const problem_type problem_types[PROBLEM_COUNT] = {
#define PROBLEMS_ROW(name, status, slug, title) [PROBLEM_##name] = { status, slug, title },
    PROBLEMS_LIST(PROBLEMS_ROW)
#undef PROBLEMS_ROW
};

const problem_type *problems_get(problem_id id)
{
    return &problem_types[id];
}
