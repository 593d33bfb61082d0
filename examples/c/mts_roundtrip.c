/* Message queues from C (ham's extension, NX-OS's MTS): sends three messages to entity
 * `rx`, then receives and acknowledges them as that entity would (run as root, or as a
 * process of an entity in rx's accept_from for the sends and of rx for the receives). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <ham.h>

int main(void) {
    const char *msgs[] = {"alpha", "beta", "gamma"};
    for (int k = 0; k < 3; k++) {
        if (ham_mts_send("rx", msgs[k], strlen(msgs[k])) <= 0) {
            perror("ham_mts_send");
            return 2;
        }
    }
    for (int k = 0; k < 3; k++) {
        char buf[64];
        uint64_t id = 0;
        unsigned int deliveries = 0;
        ptrdiff_t n = ham_mts_recv("rx", buf, sizeof buf - 1, 1000, &id, &deliveries);
        if (n < 0) {
            perror("ham_mts_recv");
            return 2;
        }
        buf[n] = '\0';
        printf("%s %u\n", buf, deliveries);
        if (ham_mts_ack("rx", id) != 0) {
            perror("ham_mts_ack");
            return 2;
        }
    }
    char buf[8];
    uint64_t id;
    unsigned int d;
    if (ham_mts_recv("rx", buf, sizeof buf, 0, &id, &d) != -1 || errno != EAGAIN) {
        fprintf(stderr, "mts_roundtrip: the queue is not empty\n");
        return 3;
    }
    return 0;
}
