/* A self-attached client that heartbeats: attaches itself as ENTITY with a heartbeat every
 * 50 ms (2 missed beats fire CONDHBEATMISSEDLOW, 4 CONDHBEATMISSEDHIGH), beats BEATS times,
 * then stops beating and waits to be noticed.
 *
 *   usage: heartbeat ENTITY BEATS
 * Finds ham through HAM_CONFIG (or as the entity ham started), as every SDK client does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ham.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: heartbeat ENTITY BEATS\n");
        return 2;
    }
    if (ham_connect(0) == -1) {
        fprintf(stderr, "ham_connect: %s\n", strerror(errno));
        return 3;
    }
    ham_entity_t *self = ham_attach_self(argv[1], 50 * 1000 * 1000ULL, 2, 4, 0);
    if (self == NULL) {
        fprintf(stderr, "ham_attach_self: %s\n", strerror(errno));
        return 1;
    }
    printf("attached\n");
    fflush(stdout);
    struct timespec period = {0, 50 * 1000 * 1000};
    for (int i = 0; i < atoi(argv[2]); i++) {
        ham_heartbeat();
        nanosleep(&period, NULL);
    }
    printf("stopped beating\n");
    fflush(stdout);
    for (;;)
        pause();
}
