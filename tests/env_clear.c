/*
 * env_clear: unsets the NODESTATE_* environment of a test process.
 */
#include "env_clear.h"

#include <stdlib.h>
#include <string.h>

extern char **environ;

/* Bounds the loop: every round removes one variable or ends it. */
#define NS_ENV_MAX_ROUNDS 1000

int ns_env_clear(void)
{
    /* unsetenv changes environ, so each round scans it again from the start. */
    for (int rounds = 0; rounds < NS_ENV_MAX_ROUNDS; rounds++) {
        char name[256] = "";
        for (size_t i = 0; environ[i] != NULL; i++) {
            size_t n = strcspn(environ[i], "=");
            /* NODESTATE_TEST_PG is the harness's own (pg_check.h), not the server's. */
            if (strncmp(environ[i], "NODESTATE_", 10) == 0 && n < sizeof name &&
                strncmp(environ[i], "NODESTATE_TEST_PG=", 18) != 0) {
                memcpy(name, environ[i], n);
                name[n] = '\0';
                break;
            }
        }
        if (name[0] == '\0')
            return 0;
        if (unsetenv(name) != 0)
            return -1;
    }
    return -1;
}
