/* QNX's "compound restart", written for ham. Restarting a server is often not the whole
 * recovery: QNX's example restarts an NFS client and then mounts its directories again.
 * Here the death condition of a running daemon carries a list of actions that ham runs in
 * order, each after the one before has finished:
 *
 *   1. restart the daemon from COMMAND LINE;
 *   2. wait 200 ms (a waitfor without a path is a plain delay);
 *   3. wait up to 5 s for READYPATH, which the restarted daemon creates when it is ready
 *      (if it never appears, a line goes to ham's log instead);
 *   4. "remount": append "remounted" to MARKERPATH.
 *
 *   usage: qnx_compound_restart NAME PID 'COMMAND LINE' MARKERPATH READYPATH
 *
 * ham splits a command line as a shell would (blanks, quotes, backslashes) but runs no
 * shell, so step 4 calls /bin/sh -c itself for its redirection. MARKERPATH must not contain
 * a single quote. Prints "defined" once ham holds all of it; any failure is reported and
 * exits 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <ha/ham.h>

static void fail(const char *call) {
    fprintf(stderr, "qnx_compound_restart: %s: %s\n", call, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr,
                "usage: qnx_compound_restart NAME PID 'COMMAND LINE' MARKERPATH READYPATH\n");
        return 2;
    }
    const char *name = argv[1], *line = argv[3], *marker = argv[4], *ready = argv[5];
    char *end;
    long pid = strtol(argv[2], &end, 10);
    if (*argv[2] == '\0' || *end != '\0' || pid <= 0) {
        fprintf(stderr, "qnx_compound_restart: PID must be a process id, not '%s'\n", argv[2]);
        return 2;
    }
    if (strchr(marker, '\'') != NULL) {
        fprintf(stderr, "qnx_compound_restart: MARKERPATH must not contain a single quote\n");
        return 2;
    }
    char remount[1024];
    int n = snprintf(remount, sizeof remount, "/bin/sh -c 'echo remounted >> %s'", marker);
    if (n < 0 || (size_t)n >= sizeof remount) {
        fprintf(stderr, "qnx_compound_restart: MARKERPATH is too long\n");
        return 2;
    }

    if (ham_connect(0) == -1)
        fail("ham_connect");
    ham_entity_t *server = ham_attach(name, ND_LOCAL_NODE, (pid_t)pid, NULL, 0);
    if (server == NULL)
        fail("ham_attach");
    ham_condition_t *died = ham_condition(server, CONDDEATH, "death", HREARMAFTERRESTART);
    if (died == NULL)
        fail("ham_condition");

    /* The list, in the order ham runs it. */
    ham_action_t *restart = ham_action_restart(died, "restart", line, HREARMAFTERRESTART);
    if (restart == NULL)
        fail("ham_action_restart");
    ham_action_t *settle = ham_action_waitfor(died, "settle", NULL, 200, HREARMAFTERRESTART);
    if (settle == NULL)
        fail("ham_action_waitfor (delay)");
    ham_action_t *ready_wait = ham_action_waitfor(died, "ready", ready, 5000, HREARMAFTERRESTART);
    if (ready_wait == NULL)
        fail("ham_action_waitfor (path)");
    if (ham_action_fail_log(ready_wait, "not-ready", "the restarted server never became ready",
                            0, 1, 0) == -1)
        fail("ham_action_fail_log");
    ham_action_t *mount = ham_action_execute(died, "remount", remount, HREARMAFTERRESTART);
    if (mount == NULL)
        fail("ham_action_execute");

    ham_action_t *all[] = {mount, ready_wait, settle, restart};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (ham_action_handle_free(all[i]) == -1)
            fail("ham_action_handle_free");
    if (ham_condition_handle_free(died) == -1)
        fail("ham_condition_handle_free");
    if (ham_entity_handle_free(server) == -1)
        fail("ham_entity_handle_free");
    if (ham_disconnect(0) == -1)
        fail("ham_disconnect");

    printf("defined\n");
    return 0;
}
