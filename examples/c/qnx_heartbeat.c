/* QNX's heartbeating client, written for ham. The process attaches itself to ham as NAME
 * and promises a heartbeat every PERIOD_MS; two missed beats fire CONDHBEATMISSEDLOW, four
 * CONDHBEATMISSEDHIGH. It asks ham to log both, beats BEATS times, then goes silent (as a
 * hung process would) and waits.
 *
 *   usage: qnx_heartbeat NAME PERIOD_MS BEATS
 *
 * As QNX notes, ham_attach_self makes the connection itself: no ham_connect is needed. A
 * process may add conditions to its own entity, and only actions that run nothing with
 * ham's privileges (log, notify_pulse, heartbeat_healthy); anything else (an execute, a
 * restart) is for ham's configuration or a privileged monitor. Differences from QNX: the
 * shortest period is 1 ms, not 1 s, and beats are not rounded to the period.
 * Prints "attached", then "stopped beating"; any failure is reported and exits 1. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ha/ham.h>

static void fail(const char *call) {
    fprintf(stderr, "qnx_heartbeat: %s: %s\n", call, strerror(errno));
    exit(1);
}

static long number(const char *arg, const char *what) {
    char *end;
    long v = strtol(arg, &end, 10);
    if (*arg == '\0' || *end != '\0' || v < 0) {
        fprintf(stderr, "qnx_heartbeat: %s must be a number, not '%s'\n", what, arg);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: qnx_heartbeat NAME PERIOD_MS BEATS\n");
        return 2;
    }
    const char *name = argv[1];
    long period_ms = number(argv[2], "PERIOD_MS"), beats = number(argv[3], "BEATS");
    char late[128], hung[128];
    snprintf(late, sizeof late, "%s is late", name);
    snprintf(hung, sizeof hung, "%s is hung", name);

    ham_entity_t *me = ham_attach_self(name, (uint64_t)period_ms * 1000000ULL, 2, 4, 0);
    if (me == NULL)
        fail("ham_attach_self");

    ham_condition_t *low = ham_condition(me, CONDHBEATMISSEDLOW, "late", HREARMAFTERRESTART);
    if (low == NULL)
        fail("ham_condition (low)");
    ham_action_t *say_late = ham_action_log(low, "say-late", late, 0, 1, HREARMAFTERRESTART);
    if (say_late == NULL)
        fail("ham_action_log (low)");
    ham_condition_t *high = ham_condition(me, CONDHBEATMISSEDHIGH, "hung", HREARMAFTERRESTART);
    if (high == NULL)
        fail("ham_condition (high)");
    ham_action_t *say_hung = ham_action_log(high, "say-hung", hung, 0, 1, HREARMAFTERRESTART);
    if (say_hung == NULL)
        fail("ham_action_log (high)");
    if (ham_action_handle_free(say_hung) == -1 || ham_action_handle_free(say_late) == -1 ||
        ham_condition_handle_free(high) == -1 || ham_condition_handle_free(low) == -1)
        fail("freeing a handle");

    printf("attached\n");
    fflush(stdout);

    struct timespec period = {period_ms / 1000, (period_ms % 1000) * 1000000L};
    for (long i = 0; i < beats; i++) {
        ham_heartbeat();
        nanosleep(&period, NULL);
    }
    printf("stopped beating\n");
    fflush(stdout);

    /* Still attached, and silent from now on: ham reports the misses; it does not kill a
     * process it did not start for them. */
    for (;;)
        pause();
}
