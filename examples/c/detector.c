/* A detector: defines a raise condition on ENTITY (type 3, class 42, severity 2) whose
 * action writes MARKER, then raises a matching event through the shared-memory ring, and one
 * that does not match (another class).
 *
 *   usage: detector ENTITY MARKER */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ham.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: detector ENTITY MARKER\n");
        return 2;
    }
    char line[512];
    ham_entity_t *e = ham_entity_handle(ND_LOCAL_NODE, argv[1], 0);
    if (e == NULL) {
        fprintf(stderr, "ham_entity_handle: %s\n", strerror(errno));
        return 1;
    }
    ham_condition_t *c = ham_condition_raise(e, "overheat", 3, 42, 2, 0);
    snprintf(line, sizeof line, "/bin/sh -c 'echo $HAM_RAISE_CLASS $HAM_RAISE_SEVERITY >> %s'", argv[2]);
    if (c == NULL || ham_action_execute(c, "mark", line, 0) == NULL) {
        fprintf(stderr, "defining the condition: %s\n", strerror(errno));
        return 1;
    }
    if (ham_entity_condition_raise(e, 3, 7, 2, 0) == -1 ||  /* another class: no match */
        ham_entity_condition_raise(e, 3, 42, 2, 0) == -1) { /* the match */
        fprintf(stderr, "ham_entity_condition_raise: %s\n", strerror(errno));
        return 1;
    }
    printf("raised\n");
    return 0;
}
