/* QNX's "simple restart", written for ham: a monitor hands a daemon that is already running
 * to ham, and asks ham to start it again, from a command line of our choosing, whenever it
 * dies. The monitor itself exits at once: ham does the watching.
 *
 *   usage: qnx_simple_restart NAME PID 'COMMAND LINE'
 *
 * As in QNX, NAME becomes an entity, its death a condition (kept across restarts), and the
 * restart an action of that condition. Two things differ on Linux (docs/PORTING-FROM-QNX.md):
 * the command line must keep the daemon in the foreground (ham does not follow daemon()),
 * and HAM_CONFIG names the ham instance unless ham started this program.
 * Prints "defined" once ham holds all of it; any failure is reported and exits 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <ha/ham.h>

static void fail(const char *call) {
    fprintf(stderr, "qnx_simple_restart: %s: %s\n", call, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: qnx_simple_restart NAME PID 'COMMAND LINE'\n");
        return 2;
    }
    const char *name = argv[1], *line = argv[3];
    char *end;
    long pid = strtol(argv[2], &end, 10);
    if (*argv[2] == '\0' || *end != '\0' || pid <= 0) {
        fprintf(stderr, "qnx_simple_restart: PID must be a process id, not '%s'\n", argv[2]);
        return 2;
    }

    if (ham_connect(0) == -1)
        fail("ham_connect");

    /* The daemon runs already: ham watches that very process (the line is for pid <= 0). */
    ham_entity_t *daemon = ham_attach(name, ND_LOCAL_NODE, (pid_t)pid, NULL, 0);
    if (daemon == NULL)
        fail("ham_attach");

    /* Its death, re-armed after every restart, so the second death is handled too. */
    ham_condition_t *died = ham_condition(daemon, CONDDEATH, "death", HREARMAFTERRESTART);
    if (died == NULL)
        fail("ham_condition");

    ham_action_t *again = ham_action_restart(died, "restart", line, HREARMAFTERRESTART);
    if (again == NULL)
        fail("ham_action_restart");

    /* Handles only name what ham keeps: freeing them changes nothing there. */
    if (ham_action_handle_free(again) == -1)
        fail("ham_action_handle_free");
    if (ham_condition_handle_free(died) == -1)
        fail("ham_condition_handle_free");
    if (ham_entity_handle_free(daemon) == -1)
        fail("ham_entity_handle_free");
    if (ham_disconnect(0) == -1)
        fail("ham_disconnect");

    printf("defined\n");
    return 0;
}
