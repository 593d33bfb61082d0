/* A monitor: attaches to a process ham did not start, adds a death condition with a
 * restart action (the command that replaces it) and an execute action with a fail list,
 * then checks that bad calls fail with QNX's errnos.
 *
 *   usage: monitor ENTITY PID MARKER [--pause]
 * With --pause it stops between creating the condition and adding its actions, until a line
 * arrives on stdin (a test kills the HAM there: the second call must reach its successor,
 * and the condition must still be there). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ham.h>

static int fails;

#define CHECK(what, cond)                                                                     \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "monitor: %s failed: %s\n", what, strerror(errno));              \
            fails++;                                                                           \
        }                                                                                      \
    } while (0)

#define EXPECT_ERRNO(what, call, want)                                                        \
    do {                                                                                       \
        errno = 0;                                                                             \
        int bad_ = (call);                                                                     \
        if (!bad_ || errno != (want)) {                                                        \
            fprintf(stderr, "monitor: %s: expected errno %d, got %d\n", what, want, errno);  \
            fails++;                                                                           \
        }                                                                                      \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: monitor ENTITY PID MARKER [--pause]\n");
        return 2;
    }
    const char *name = argv[1], *marker = argv[3];
    int pause = argc > 4 && strcmp(argv[4], "--pause") == 0;
    char line[512];

    CHECK("ham_connect", ham_connect(0) == 0);
    ham_entity_t *e = ham_attach(name, ND_LOCAL_NODE, (pid_t)atoi(argv[2]), NULL, 0);
    CHECK("ham_attach", e != NULL);
    ham_condition_t *death = ham_condition(e, CONDDEATH, "death", HREARMAFTERRESTART);
    CHECK("ham_condition", death != NULL);
    if (pause) {
        printf("paused\n");
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL)
            return 1;
    }
    ham_action_t *restart = ham_action_restart(death, "restart", "/bin/sleep 1000", 0);
    CHECK("ham_action_restart", restart != NULL);
    snprintf(line, sizeof line, "/bin/sh -c 'echo $HAM_ENTITY died >> %s'", marker);
    ham_action_t *note = ham_action_execute(death, "note", line, 0);
    CHECK("ham_action_execute", note != NULL);
    CHECK("ham_action_fail_log", ham_action_fail_log(note, "note-failed", "the note failed", 0, 0, 0) == 0);

    /* Bad calls fail with QNX's errnos, and change nothing. */
    EXPECT_ERRNO("NULL entity", ham_condition(NULL, CONDDEATH, "x", 0) == NULL, EINVAL);
    EXPECT_ERRNO("a second restart action",
                 ham_action_restart(death, "again", "/bin/true", 0) == NULL, EINVAL);
    ham_condition_t *quick = ham_condition(e, CONDDEATH, "quick", HCONDNOWAIT);
    CHECK("ham_condition HCONDNOWAIT", quick != NULL);
    EXPECT_ERRNO("a waitfor on a HCONDNOWAIT condition",
                 ham_action_waitfor(quick, "wait", "/tmp", 100, 0) == NULL, EINVAL);
    EXPECT_ERRNO("an unknown entity", ham_entity_handle(ND_LOCAL_NODE, "no-such", 0) == NULL, ENOENT);
    EXPECT_ERRNO("a duplicate condition", ham_condition(e, CONDDEATH, "death", 0) == NULL, EEXIST);
    EXPECT_ERRNO("another node", ham_connect_nd(7, 0) == -1, EOPNOTSUPP);
    EXPECT_ERRNO("a name with a slash", ham_condition(e, CONDDEATH, "a/b", 0) == NULL, EINVAL);
    CHECK("HGETFLAGS", ham_condition_control(quick, HGETFLAGS, 0) == (int)HCONDNOWAIT);

    ham_action_handle_free(note);
    ham_action_handle_free(restart);
    ham_condition_handle_free(quick);
    ham_condition_handle_free(death);
    ham_entity_handle_free(e);
    ham_disconnect(0);
    printf("%s\n", fails ? "failed" : "done");
    return fails ? 1 : 0;
}
